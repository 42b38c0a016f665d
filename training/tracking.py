"""The job's MLflow run: opened and ended by the recipe, written to by the fit and the recipe alike.

A plain MLflow client, so that every model family logs the same way (the neural family hands the
run to Lightning's logger by its id). MLflow's failures come out as RegistryError (`mlflow_errors`).
"""

from __future__ import annotations

import time
from pathlib import Path

from training.mlflow_calls import ensure_experiment, mlflow_errors

PARAM_CHARS = 250  # a parameter's value is cut here, as Lightning's logger cuts it


class TrackingRun:
    """One MLflow run. `run_id` is None in the extra processes of a DDP job, which log nothing:
    rank zero's run is the job's."""

    def __init__(self, tracking_uri: str, run_id: str | None):
        from mlflow import MlflowClient

        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)

    @classmethod
    def start(cls, tracking_uri: str, experiment_name: str, artifact_location: str | None, run_name: str,
              tags: dict[str, str]) -> "TrackingRun":
        """A new run in `experiment_name` (created unless it exists). Raises RegistryError."""
        from mlflow.tracking.context.registry import resolve_tags

        ensure_experiment(tracking_uri, experiment_name, artifact_location)
        tracking = cls(tracking_uri, None)
        with mlflow_errors("start run"):
            experiment = tracking.client.get_experiment_by_name(experiment_name)
            run = tracking.client.create_run(experiment.experiment_id, run_name=run_name, tags=resolve_tags(tags))
        tracking.run_id = run.info.run_id
        return tracking

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        if self.run_id is not None:
            with mlflow_errors("log parameters"):
                self.client.log_batch(self.run_id, params=[Param(key, str(value)[:PARAM_CHARS])
                                                           for key, value in params.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """All in one round trip, not one per metric."""
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        if self.run_id is not None:
            with mlflow_errors("log metrics"):
                self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now_ms, step)
                                                            for key, value in metrics.items()])

    def log_artifact(self, path: Path, folder: str) -> None:
        if self.run_id is not None:
            with mlflow_errors("log an artifact"):
                self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str) -> None:
        """`FINISHED` or `FAILED`."""
        if self.run_id is not None:
            with mlflow_errors("end run"):
                self.client.set_terminated(self.run_id, status)
