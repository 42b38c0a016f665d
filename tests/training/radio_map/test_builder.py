"""The radio-map family's builder: a file of its own that export-only and resume read, and one fit per job."""

from __future__ import annotations

import uuid

import pytest
import torch

from foundation.child_protocol import JobSpec
from foundation.errors import ConfigError
from foundation.settings import Settings
from foundation.train_config import TrainConfig
from training.family import FitRun
from training.pipeline import open_dataset, run_job
from training.radio_map import builder
from training.radio_map.model import RadioMapNet
from training.tracking import TrackingRun

RADIO_MAP = TrainConfig(preset="radio-map", min_labelled_sessions=10)


def filled_net() -> RadioMapNet:
    """A map with every buffer drawn at random: a round trip that dropped or mixed any of them would show."""
    net = RadioMapNet(3, (4, 5), 2, samples=64, sample_rate_hz=25000.0, memory_sessions=6, neighbours=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for buffer in net.buffers():
            buffer.copy_(torch.rand(buffer.shape, generator=gen))
    return net


def test_a_saved_map_is_a_plain_file_that_loads_back_whole(tmp_path):
    net = filled_net()
    path = builder.save(net, tmp_path / "ckpt" / "last.ckpt")
    saved = torch.load(path, map_location="cpu", weights_only=True)  # nothing but tensors and plain values
    assert set(saved) == {"schema", "samples", "sample_rate_hz", "shape", "state_dict"}  # no Lightning fields
    loaded = builder.load(path)
    assert not loaded.training and loaded.describe() == net.describe() and loaded.shape_args() == net.shape_args()
    for name, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # the partial file was renamed, not left


def test_a_file_that_is_not_a_radio_map_is_refused(tmp_path):
    lightning_like = tmp_path / "neural.ckpt"
    torch.save({"epoch": 3, "state_dict": {}, "hyper_parameters": {"preset": "tiny"}}, lightning_like)
    with pytest.raises(ConfigError, match="is not a radio map") as refused:
        builder.load(lightning_like)
    assert refused.value.stage == "train"


def test_a_rank_other_than_zero_fits_nothing_and_returns_no_network(tmp_path, example_dataset, monkeypatch):
    """Under torchrun or a Kubeflow PyTorchJob every rank runs the recipe; one fit is the job's (rank zero's)."""
    monkeypatch.setenv("RANK", "1")
    settings = Settings(state_dir=tmp_path)
    data = open_dataset(settings, RADIO_MAP, str(example_dataset))
    fitted = builder.fit(data, RADIO_MAP, FitRun(tmp_path / "ckpt", None, TrackingRun(settings.mlflow_tracking_uri,
                                                                                      run_id=None)))
    assert not fitted.is_global_zero and fitted.net is None and fitted.best_checkpoint is None
    assert not (tmp_path / "ckpt").exists()


@pytest.fixture(scope="module")
def first_job(tmp_path_factory, example_dataset) -> tuple[Settings, dict]:
    state = tmp_path_factory.mktemp("state")
    settings = Settings(state_dir=state, model_name=f"radio-{uuid.uuid4().hex[:8]}")
    return settings, run_job(settings, JobSpec(data_uri=str(example_dataset), config=RADIO_MAP,
                                               checkpoint_dir=state / "ckpt"))


def test_export_only_registers_the_kept_map_again_without_fitting(first_job, example_dataset):
    settings, first = first_job
    checkpoint = settings.state_dir / "ckpt" / "last.ckpt"
    assert first["training"]["best_checkpoint"] == str(checkpoint) and first["training"]["epochs_run"] == 1
    again = run_job(settings, JobSpec(data_uri=str(example_dataset), config=RADIO_MAP, export_only=True,
                                      checkpoint=checkpoint))
    assert again["model"]["model_version"] != first["model"]["model_version"]
    assert again["training"]["epochs_run"] is None  # loaded, not fitted
    assert again["metrics"]["median_error_m"] == pytest.approx(first["metrics"]["median_error_m"], rel=1e-6)


def test_resume_refits_the_map_and_keeps_it_in_the_same_file(first_job, example_dataset):
    settings, first = first_job
    checkpoint = settings.state_dir / "ckpt" / "last.ckpt"
    before = checkpoint.stat().st_mtime_ns
    resumed = run_job(settings, JobSpec(data_uri=str(example_dataset), config=RADIO_MAP, resume_training=True,
                                        checkpoint_dir=checkpoint.parent, idempotency_key=f"resume-{uuid.uuid4()}"))
    assert resumed["training"]["epochs_run"] == 1 and checkpoint.stat().st_mtime_ns > before
    # the fit is deterministic: the refitted map scores as the first one did
    assert resumed["metrics"]["median_error_m"] == pytest.approx(first["metrics"]["median_error_m"], rel=1e-6)
    assert isinstance(builder.load(checkpoint), RadioMapNet)


def test_a_job_on_a_rank_other_than_zero_registers_nothing_and_starts_no_run(first_job, example_dataset,
                                                                             monkeypatch):
    from mlflow import MlflowClient

    settings, _ = first_job
    client = MlflowClient(settings.mlflow_tracking_uri)
    runs_before = client.search_runs([e.experiment_id for e in client.search_experiments()])
    versions_before = client.search_model_versions(f"name='{settings.model_name}'")
    monkeypatch.setenv("RANK", "1")
    spec = JobSpec(data_uri=str(example_dataset), config=RADIO_MAP, idempotency_key=f"rank-{uuid.uuid4()}",
                   checkpoint_dir=settings.state_dir / "rank1")
    assert run_job(settings, spec) is None
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == len(runs_before)
    assert len(client.search_model_versions(f"name='{settings.model_name}'")) == len(versions_before)
    assert not (settings.state_dir / "rank1").exists()
