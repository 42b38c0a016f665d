"""The end-of-job summary: the object `train --json` prints, and the readable form `train` prints."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from foundation.logs import format_km, public_uri

SPLITS = ("train", "val", "test")


def mlflow_ref(tracking_uri: str, run_id: str) -> dict:
    """Where the run is, and how to look at it: the UI command when embedded, the server's URL otherwise."""
    tracking_uri = public_uri(tracking_uri)  # a result is stored and shown: never with credentials
    mlflow = shlex.quote(str(Path(sys.executable).with_name("mlflow")))  # the environment's own: not on PATH
    ui = f"{mlflow} ui --backend-store-uri {tracking_uri}" if tracking_uri.startswith("sqlite") else tracking_uri
    return {"tracking_uri": tracking_uri, "run_id": run_id, "ui": ui}


def dataset_ref(data) -> dict:
    return {"id": data.manifest.dataset_id, "version": data.manifest.version, "uri": data.uri}


def champion_move(job_id: str, registration, registered_by: str) -> dict | None:
    """The move of the `champion` alias this job's gate made, which the service announces as
    model.champion-changed; None when it made none. A version this job registered in an earlier
    attempt that never reported (killed after the aliases) still counts while it is champion; a
    replay of a version another job registered moved nothing."""
    gate = registration.gate
    if registered_by != job_id or gate is None or not gate.promoted or not registration.promoted:
        return None
    return {"previous_version": gate.champion_version, "reason": f"champion gate: {gate.reason}"}


def job_summary(job_id: str, data, mlflow: dict, registration, evaluation, fitted) -> dict:
    """A job that registered a model: `data` its verified dataset, `fitted` its FitResult."""
    return {
        "job_id": job_id,
        "dataset": dataset_ref(data),
        "model": registration.to_dict(),
        "champion_move": champion_move(job_id, registration, job_id),
        "mlflow": mlflow,
        "training": {"epochs_run": fitted.epochs_run, "best_epoch": fitted.best_epoch,
                     "best_checkpoint": str(fitted.best_checkpoint), "fit_s": round(fitted.fit_s, 3)},
        "metrics": evaluation.metrics,
        "baselines": evaluation.baselines,
        "sessions": {split: int(len(data.indices(split))) for split in SPLITS},
    }


def replayed_summary(job_id: str, data, mlflow: dict, registration, card: dict) -> dict:
    """What a replayed job reports: the version an earlier job registered (its card), nothing trained again."""
    return {
        "job_id": job_id,
        "already_registered_by": card["training"]["job_id"],
        "dataset": dataset_ref(data),
        "model": registration.to_dict(),
        "champion_move": champion_move(job_id, registration, card["training"]["job_id"]),
        "mlflow": mlflow,
        "training": {"epochs_run": card["training"]["epochs_run"], "best_epoch": card["training"]["best_epoch"]},
        "metrics": card["metrics"],
        "baselines": {},
        "sessions": card["training"]["sessions"],
    }


def format_summary(result: dict) -> str:
    model, metrics = result["model"], result["metrics"]
    lines = [
        f"job {result['job_id']}: {model['model_name']} version {model['model_version']} registered "
        f"(aliases: {', '.join(model['aliases'])}{'' if model['promoted'] else '; not promoted'})",
        *([f"  (already registered by job {result['already_registered_by']}: nothing was trained again)"]
          if "already_registered_by" in result else []),
        f"  dataset      {result['dataset']['id']} v{result['dataset']['version']}  {result['dataset']['uri']}",
        "  sessions     " + ", ".join(f"{k} {v}" for k, v in result["sessions"].items()),
        f"  model.onnx   {model['onnx']['uri']}  ({model['onnx']['bytes']} bytes, sha256 {model['onnx']['sha256'][:12]}…)",
        f"  model.json   {model['card_uri']}",
        f"  mlflow run   {result['mlflow']['run_id']}  ({result['mlflow']['tracking_uri']})",
        "",
        "  test split             median       p90      mean",
        f"  model            {format_km(metrics['median_error_m']):>10} {format_km(metrics['p90_error_m']):>10} "
        f"{format_km(metrics['mean_error_m']):>10}",
    ]
    for name, b in result["baselines"].items():
        lines.append(f"  {name:<16} {format_km(b['median_error_m']):>10} {format_km(b['p90_error_m']):>10} "
                     f"{format_km(b['mean_error_m']):>10}")
    lines += [
        "",
        f"  coverage   1σ {metrics['coverage_1sigma']:.3f} (ideal 0.393)   2σ {metrics['coverage_2sigma']:.3f} "
        f"(ideal 0.865)   95% {metrics['coverage_95']:.3f} (ideal 0.950)   NLL {metrics['nll']:.2f}",
        "",
        f"  open the MLflow UI:  {result['mlflow']['ui']}",
    ]
    return "\n".join(lines)
