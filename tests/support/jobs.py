"""Jobs in a real job store, for the tests that need one: `JobStore.accept`'s thirteen parameters
with a default for each, and the result a successful child prints."""

from __future__ import annotations

import uuid

from service.jobs.events import accepted_message, cancelled_message
from service.jobs.store import JobStore
from service.jobs.tables import Job

VALID_RESULT = {
    "model": {"model_name": "m", "model_version": 1, "aliases": ["candidate"], "promoted": False,
              "model_uri": "models:/m/1", "onnx": {"uri": "s3://b/m/1/model.onnx", "sha256": "0" * 64, "bytes": 10},
              "card_uri": "s3://b/m/1/model.json"},
    "metrics": {"median_error_m": 10.0, "p90_error_m": 20.0, "coverage_1sigma": 0.4, "coverage_2sigma": 0.86},
    "mlflow": {"run_id": "r1"},
}


def trigger(*, dataset_id: str = "nw-italy-2m", dataset_version: int = 1, **overrides) -> dict:
    """The keyword arguments of `JobStore.accept` for a new auto trigger: a fresh event id, the dataset's
    version under the datasets bucket, config {"epochs": 4} hashed "c0ffee", the service's own event
    builders and the store's clock. Any argument is overridden by its own name."""
    uri = f"s3://heimdall-datasets/{dataset_id}/v{dataset_version}"
    return {"event_id": str(uuid.uuid4()), "trigger_kind": "auto", "dataset_id": dataset_id,
            "dataset_version": dataset_version, "dataset_uri": uri, "config": {"epochs": 4}, "config_hash": "c0ffee",
            "accepted_message": accepted_message, "cancelled_message": cancelled_message, **overrides}


def accept(store: JobStore, **overrides) -> Job:
    """The job that `store` accepted a `trigger(**overrides)` as."""
    return store.accept(**trigger(**overrides)).job
