"""The job's MLflow run, as the recipe and the families write to it (a real MLflow store)."""

from __future__ import annotations

from foundation.settings import Settings
from training.tracking import PARAM_CHARS, TrackingRun


def test_a_run_keeps_its_name_tags_params_and_metrics_and_ends_with_its_status(tmp_path):
    settings = Settings(state_dir=tmp_path)
    tracking = TrackingRun.start(settings.mlflow_tracking_uri, "tracking", settings.mlflow_artifacts_uri,
                                 run_name="train-job-1", tags={"job_id": "job-1"})
    tracking.log_params({"preset": "tiny", "dims": (8, 16), "long": "x" * 300})
    tracking.log_params({"preset": "tiny"})  # the same value again is fine (config, then the fitted model's shape)
    tracking.log_metrics({"val_loss": 1, "test_median_error_m": 2.5})
    tracking.finish("FAILED")
    run = tracking.client.get_run(tracking.run_id)
    assert run.info.run_name == "train-job-1" and run.data.tags["job_id"] == "job-1"
    assert run.data.params == {"preset": "tiny", "dims": "(8, 16)", "long": "x" * PARAM_CHARS}
    assert run.data.metrics == {"val_loss": 1.0, "test_median_error_m": 2.5} and run.info.status == "FAILED"


def test_the_run_of_an_extra_ddp_rank_writes_nothing(tmp_path):
    settings = Settings(state_dir=tmp_path)
    tracking = TrackingRun(settings.mlflow_tracking_uri, run_id=None)
    tracking.log_params({"preset": "tiny"})
    tracking.log_metrics({"val_loss": 1.0})
    tracking.log_artifact(tmp_path, "plots")
    tracking.finish("FINISHED")
    experiments = [e.experiment_id for e in tracking.client.search_experiments()]
    assert tracking.client.search_runs(experiments) == []
