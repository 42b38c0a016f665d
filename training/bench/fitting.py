"""Fitting a bench model as a job fits it: the family's own fit on the training split, then the covariance scale on val."""

from __future__ import annotations

import time
from pathlib import Path

from foundation.settings import Settings
from foundation.train_config import TrainConfig


def train_for_bench(settings: Settings, data, config: TrainConfig, name: str, workdir: Path):
    """(the fitted net, its MLflow run, still open, {train_s, fit_s, epochs, covariance_scale}); checkpoints in `workdir`."""
    from training.families import FAMILIES
    from training.family import FitRun
    from training.pipeline import calibrate_covariance
    from training.tracking import TrackingRun

    tracking = TrackingRun.start(settings.mlflow_tracking_uri, "heimdall-bench", settings.mlflow_artifacts_uri,
                                 run_name=f"bench-{name}", tags={})
    tracking.log_params(data.split.params())
    started = time.monotonic()
    fitted = FAMILIES[config.preset].fit(data, config, FitRun(workdir / "checkpoints", None, tracking))
    train_s = time.monotonic() - started
    scale = calibrate_covariance(fitted.net, data)
    return fitted.net, tracking, {"train_s": train_s, "fit_s": fitted.fit_s, "epochs": fitted.epochs_run,
                                  "covariance_scale": scale}
