"""The model card, `model.json` (`heimdall.model/1`), exactly as `model.md` lists it."""

from __future__ import annotations

from datetime import datetime, timezone

from foundation.train_config import TrainConfig
from training.calibration import COVARIANCE_CALIBRATION
from training.datasets.verified import VerifiedDataset

CARD_SCHEMA = "heimdall.model/1"
CARD_METRICS = ("median_error_m", "p90_error_m", "mean_error_m", "coverage_1sigma", "coverage_2sigma",
                "coverage_95", "nll")


def code_version() -> str:
    from importlib.metadata import version

    return version("heimdall-training")


def build_card(*, model_name: str, onnx: dict, data: VerifiedDataset, config: TrainConfig, job_id: str,
               metrics: dict, parity: dict, mlflow_run_id: str, epochs_run: int | None,
               best_epoch: int | None, net_covariance_scale: float) -> dict:
    """The card without `model_version`: the registry fills that in once MLflow has assigned it."""
    manifest = data.manifest
    return {
        "schema": CARD_SCHEMA,
        "model_name": model_name,
        "model_version": None,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "onnx": onnx,
        "signal": {
            "center_frequency_hz": manifest.center_frequency_hz,
            "sample_rate_hz": manifest.sample_rate_hz,
            "samples": manifest.samples_per_capture,
            "max_receivers": len(data.receivers),
        },
        "receivers": [r.model_dump() for r in data.receivers],
        "training": {
            "job_id": job_id,
            "dataset": {"id": manifest.dataset_id, "version": manifest.version, "uri": data.uri},
            "sessions": {split: int(len(data.indices(split))) for split in ("train", "val", "test")},
            "split": data.split.facts(),  # method, block and buffer (m), frame origin, pinned and buffered sessions
            "config": config.model_dump(),
            "config_hash": config.config_hash(),
            "code_version": code_version(),
            "seed": config.seed,
            "epochs_run": epochs_run,
            "best_epoch": best_epoch,
            "covariance_scale": float(net_covariance_scale),
            "covariance_calibration": {**COVARIANCE_CALIBRATION, "sessions": int(len(data.indices("val")))},
        },
        "metrics": {key: float(metrics[key]) for key in CARD_METRICS},
        "parity": parity,
        "mlflow_run_id": mlflow_run_id,
    }
