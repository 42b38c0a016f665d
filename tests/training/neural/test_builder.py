"""The neural family's builder: Lightning fits, resumes where it stopped, and hands back the best checkpoint's network."""

from __future__ import annotations

import pytest
import torch

from foundation.errors import ConfigError
from foundation.settings import Settings
from foundation.train_config import TrainConfig
from training.family import FitRun
from training.neural import builder
from training.neural.model import LocalizationNet
from training.pipeline import open_dataset
from training.tracking import TrackingRun

TINY = TrainConfig(preset="tiny", epochs=2, batch_size=8, learning_rate=5e-3, patience=3, min_labelled_sessions=10)


def test_resume_training_restores_epoch_optimizer_and_scheduler(tmp_path, example_dataset):
    settings = Settings(state_dir=tmp_path)
    config = TINY
    data = open_dataset(settings, config, str(example_dataset))
    tracking = TrackingRun.start(settings.mlflow_tracking_uri, "resume", settings.mlflow_artifacts_uri,
                                 run_name="resume", tags={})
    first = builder.fit(data, config, FitRun(tmp_path / "ckpt", None, tracking))
    state = torch.load(first.last_checkpoint, weights_only=False)
    assert state["epoch"] == 1 and first.epochs_run == 2
    steps_per_epoch = state["global_step"] // 2

    longer = config.model_copy(update={"epochs": 4})
    resumed = builder.fit(data, longer, FitRun(tmp_path / "ckpt", first.last_checkpoint, tracking))
    after = torch.load(resumed.last_checkpoint, weights_only=False)
    assert after["epoch"] == 3 and resumed.epochs_run == 4
    assert after["global_step"] == 4 * steps_per_epoch, "resumed from scratch instead of from epoch 2"
    optimizer_steps = {s["step"].item() for s in after["optimizer_states"][0]["state"].values()}
    assert optimizer_steps == {4 * steps_per_epoch}, "AdamW moments were not restored"
    assert after["lr_schedulers"][0]["last_epoch"] == 4 * steps_per_epoch

    # the network handed back is the best checkpoint's (lowest val_loss), ready for calibration and export
    best = torch.load(resumed.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert isinstance(resumed.net, LocalizationNet) and not resumed.net.training
    for name, value in resumed.net.state_dict().items():
        torch.testing.assert_close(value, best[f"net.{name}"], rtol=0, atol=0)
    assert builder.load(resumed.best_checkpoint).describe() == resumed.net.describe()
    # Lightning wrote the epochs' metrics to the job's run, which it was handed by id
    metrics = tracking.client.get_run(tracking.run_id).data.metrics
    assert {"train_loss", "val_loss", "val_median_error_m"} <= metrics.keys()


def test_a_file_of_another_family_is_refused(tmp_path):
    from training.radio_map import builder as radio_map
    from training.radio_map.model import RadioMapNet

    path = radio_map.save(RadioMapNet(2, (1, 1), 1, samples=64), tmp_path / "last.ckpt")
    with pytest.raises(ConfigError, match="not a checkpoint of a neural preset") as refused:
        builder.load(path)
    assert refused.value.stage == "train"
