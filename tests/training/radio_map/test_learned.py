"""The learned radio map: the closed form at the start, corrections it cannot make learnt by gradient in
Lightning, a plain radio map baked out of it, and the job's recipe (export, export-only, resume) around it."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import replace

import numpy as np
import pytest
import torch

from foundation.child_protocol import JobSpec
from foundation.errors import ConfigError
from foundation.settings import Settings
from foundation.train_config import TrainConfig
from tests.support.oracle_map import channel, net_of, sessions
from training.bench.scenarios import scenario
from training.datasets.synth import antenna_patterns, synthesize_dataset
from training.family import FitRun
from training.pipeline import open_dataset, run_job
from training.radio_map import builder as closed_form, learned_builder
from training.radio_map.learned import HARMONICS, LearnedMapModule
from training.radio_map.model import RadioMapNet
from training.radio_map.scores import predict_power
from training.radio_map.train import split_sessions
from training.metrics import localization_errors_m
from training.tracking import TrackingRun

LEARNED = TrainConfig(preset="radio-map-learned", min_labelled_sessions=10, epochs=3)


def test_with_zero_corrections_the_posterior_is_the_closed_forms_own():
    """Every correction starts at zero, and the censored term recomputed in the step is the fit's table."""
    model = channel(np.array([-2.0, 0.0, 1.5]))
    net, _ = net_of(model)
    module = LearnedMapModule.start_from(net, learning_rate=1e-2, train_sessions=100)
    power = torch.tensor(sessions(model, 16), dtype=torch.float32)
    rx = torch.tensor(np.repeat(model.rx_position[None], 16, axis=0), dtype=torch.float32)
    signal, heard, censored = net.per_receiver(power, rx, torch.ones_like(power, dtype=torch.bool))[:3]
    assert censored.sum() > 0  # the censored term is exercised
    with torch.no_grad():
        learned = module.log_posterior({"signal": signal, "heard": heard, "censored": censored})
        closed = net.log_posterior(signal, heard, censored, module.net.log_prior)
        torch.testing.assert_close(module.corrections.channel(module.net).censored_log_lik, net.censored_log_lik,
                                   atol=1e-4, rtol=0)
    torch.testing.assert_close(learned, closed, atol=1e-4, rtol=0)
    assert module.corrections.penalty().item() == 0.0


def test_baking_writes_the_corrections_into_a_plain_map_without_a_memory():
    net, _ = net_of(channel())
    position_prior = torch.log_softmax(torch.linspace(0.0, 3.0, net.log_prior.numel()), dim=0)
    net.log_prior.copy_(position_prior)
    module = LearnedMapModule.start_from(net, learning_rate=1e-2, train_sessions=100)
    # trained under a flat prior, served with the closed form's position prior
    assert torch.allclose(module.net.log_prior, module.net.log_prior[0]) and not torch.allclose(position_prior, position_prior[0])
    with torch.no_grad():
        module.corrections.antenna_db[0, 0, 0] = 4.0  # receiver 0 hears +4 dB due north
    baked = module.baked()
    assert isinstance(baked, RadioMapNet) and baked.describe()["preset"] == "radio-map-learned"
    assert baked.memory.position_en.shape[0] == 1  # its size does not grow with the training sessions
    torch.testing.assert_close(baked.log_prior, position_prior)
    north = int(torch.argmax(baked.grid_en[:, 1] - baked.rx_en[0, 1] - (baked.grid_en[:, 0] - baked.rx_en[0, 0]).abs()))
    assert (baked.mean_db - net.mean_db)[0, north].item() == pytest.approx(4.0, abs=0.6)
    torch.testing.assert_close(baked.mean_db[1:], net.mean_db[1:])


@pytest.fixture(scope="module")
def directional(tmp_path_factory):
    """1,500 sessions of the directional scenario: 12 dB front-to-back receive antennas."""
    root = tmp_path_factory.mktemp("directional")
    cfg = replace(scenario("directional", sessions=1500), dataset_id="directional-test")
    return cfg, synthesize_dataset(cfg, str(root))


def test_the_learned_map_learns_directional_antennas_the_closed_form_cannot(tmp_path, directional):
    cfg, uri = directional
    settings = Settings(state_dir=tmp_path)
    config = TrainConfig(preset="radio-map-learned", seed=0)
    data = open_dataset(settings, config, uri)
    tracking = TrackingRun.start(settings.mlflow_tracking_uri, "learned", settings.mlflow_artifacts_uri,
                                 run_name="learned", tags={})
    closed = closed_form.fit(data, config, FitRun(tmp_path / "closed", None, tracking))
    learned = learned_builder.fit(data, config, FitRun(tmp_path / "learned", None, tracking))
    test = split_sessions(data, "test")
    errors = {name: np.median(localization_errors_m(predict_power(fit.net, test, data.rx_position)[0], test.latlon))
              for name, fit in (("closed", closed), ("learned", learned))}
    assert errors["learned"] < 0.95 * errors["closed"], errors
    # the learnt antenna gains follow the generator's: over bearings, each receiver's correlates with its pattern
    module = LearnedMapModule.load_from_checkpoint(learned.best_checkpoint, map_location="cpu", weights_only=True)
    bearing = torch.linspace(0, 2 * math.pi, 361)[:-1]
    turns = torch.arange(1, HARMONICS + 1)[:, None] * bearing
    coefficients = module.corrections.antenna_db.detach()
    learnt = (coefficients[:, 0, :, None] * torch.cos(turns) + coefficients[:, 1, :, None] * torch.sin(turns)).sum(1)
    true = np.cos(bearing.numpy()[None] - antenna_patterns(cfg).boresight_rad[:, None])
    correlation = [np.corrcoef(a, b)[0, 1] for a, b in zip(learnt.numpy(), true)]
    assert np.median(correlation) > 0.5, correlation


def test_a_learned_map_job_exports_registers_and_exports_again_from_its_checkpoint(tmp_path, example_dataset):
    """The whole recipe with `--preset radio-map-learned`: Lightning's checkpoints, the baked map exported with
    parity, the card's preset; `--export_only` loads the same map; `--resume_training` goes on after epoch 3."""
    settings = Settings(state_dir=tmp_path, model_name=f"learned-{uuid.uuid4().hex[:8]}")
    first = run_job(settings, JobSpec(data_uri=str(example_dataset), config=LEARNED, checkpoint_dir=tmp_path / "ckpt"))
    assert first["training"]["epochs_run"] == 3
    card = json.loads(next(tmp_path.rglob("model.json")).read_text())
    assert card["parity"]["passed"] and card["training"]["config"]["preset"] == "radio-map-learned"
    steps_per_epoch = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] // 3
    best = first["training"]["best_checkpoint"]
    again = run_job(settings, JobSpec(data_uri=str(example_dataset), config=LEARNED, export_only=True,
                                      checkpoint=best))
    assert again["training"]["epochs_run"] is None
    assert again["metrics"]["median_error_m"] == pytest.approx(first["metrics"]["median_error_m"], rel=1e-6)
    longer = LEARNED.model_copy(update={"epochs": 5})
    resumed = run_job(settings, JobSpec(data_uri=str(example_dataset), config=longer, resume_training=True,
                                        checkpoint_dir=tmp_path / "ckpt", idempotency_key=f"resume-{uuid.uuid4()}"))
    assert resumed["training"]["epochs_run"] == 5
    after = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert after["global_step"] == 5 * steps_per_epoch, "resumed from scratch instead of from epoch 3"


def test_a_file_that_is_not_a_learned_map_is_refused(tmp_path):
    net, _ = net_of(channel())
    path = closed_form.save(net, tmp_path / "closed.ckpt")
    with pytest.raises(ConfigError, match="is not a learned radio map") as refused:
        learned_builder.load(path)
    assert refused.value.stage == "train"
