"""The training job as a recipe: data, model, fit, export, evaluate, register.

`run_job` is what `heimdall-training train` runs, in its own process. Each step is a plain
function that can be called alone; the settings object and the training configuration are
built once by the caller and passed down. The baselines, which need the data alone, are scored in
a thread beside the model's calibration and export.

Raises: DatasetError (data), ConfigError, TrainingError (train), ExportError (export),
RegistryError / StorageUnavailable (register).
"""

from __future__ import annotations

import logging
import shlex
import sys
import tempfile
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from foundation import checkpoint_store
from foundation.train_config import TrainConfig, job_key
from training.datasets.reader import DatasetReader, VerifiedDataset
from foundation.errors import ConfigError, TrainingError
from foundation.logs import log_event
from foundation.registration_permit import ask_for_permit
from foundation.object_store import open_store
from foundation.settings import Settings

log = logging.getLogger(__name__)
PARITY_SESSIONS = 16


@dataclass
class JobOptions:
    data_uri: str
    job_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    checkpoint_dir: Path | None = None
    experiment_name: str = "heimdall-localization"
    run_name_prefix: str = "train"
    export_only: bool = False
    checkpoint: Path | None = None
    resume_training: bool = False
    idempotency_key: str | None = None  # the service's key for the job; else derived from data and config
    registration_permit: bool = False  # ask the service (stdin) before registering: see registration_permit.py


def open_dataset(settings: Settings, config: TrainConfig, uri: str) -> VerifiedDataset:
    reader = DatasetReader(uri, cache_dir=settings.cache_dir, credentials=settings.s3.credentials(),
                           allowed_locations=settings.allowed_dataset_locations)
    return reader.open(validation_split=config.validation_split, test_split=config.test_split,
                       min_labelled_sessions=config.min_labelled_sessions)


def build_module(data: VerifiedDataset, config: TrainConfig, checkpoint: Path | None):
    from training.fit import LocalizationModule
    from training.neural.model import frame_scale_for

    if checkpoint is None:
        frame_scale_m = frame_scale_for(data.rx_position[:, :2].astype(np.float64))
        return LocalizationModule(samples=data.manifest.samples_per_capture, preset=config.preset,
                                  sample_rate_hz=data.manifest.sample_rate_hz, learning_rate=config.learning_rate,
                                  weight_decay=config.weight_decay, beta=config.beta,
                                  receiver_dropout=config.receiver_dropout, frame_scale_m=frame_scale_m)
    if not checkpoint.is_file():
        raise ConfigError(f"--checkpoint {checkpoint}: no such file", stage="train")
    module = LocalizationModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=True)
    if module.hparams.samples != data.manifest.samples_per_capture:
        raise ConfigError(f"--checkpoint {checkpoint} expects {module.hparams.samples} samples per capture, "
                          f"the dataset has {data.manifest.samples_per_capture}", stage="train")
    return module


def build_logger(settings: Settings, options: JobOptions, data: VerifiedDataset):
    from pytorch_lightning.loggers import MLFlowLogger

    from training.registry import ensure_experiment

    ensure_experiment(settings.mlflow_tracking_uri, options.experiment_name, settings.mlflow_artifacts_uri)
    manifest = data.manifest
    run_name = f"{options.run_name_prefix}-{manifest.dataset_id}-v{manifest.version}-{options.job_id[:8]}"
    return MLFlowLogger(experiment_name=options.experiment_name, run_name=run_name,
                        tracking_uri=settings.mlflow_tracking_uri, artifact_location=settings.mlflow_artifacts_uri,
                        tags={"job_id": options.job_id, "dataset_id": manifest.dataset_id,
                              "dataset_version": str(manifest.version)})


def resume_checkpoint(options: JobOptions, checkpoint_dir: Path) -> Path | None:
    if not options.resume_training:
        return None
    checkpoint = options.checkpoint or checkpoint_dir / "last.ckpt"
    if not checkpoint.is_file():
        raise ConfigError(f"--resume_training: checkpoint {checkpoint} does not exist", stage="train")
    return checkpoint


def train_model(settings: Settings, module, data: VerifiedDataset, config: TrainConfig, options: JobOptions,
                checkpoint_dir: Path, logger):
    from training.checkpoint_sync import CheckpointSync
    from training.fit import FitResult, fit

    if options.export_only:
        return FitResult(best_checkpoint=options.checkpoint, last_checkpoint=None, epochs_run=None,
                         best_epoch=None, best_val_loss=None)
    sync = CheckpointSync(checkpoint_store.job_store(settings.checkpoints_uri, options.job_id,
                                                     settings.s3.credentials()), checkpoint_dir) \
        if settings.checkpoints_uri else None
    try:
        result = fit(module, data, config, checkpoint_dir, logger, resume_checkpoint(options, checkpoint_dir), sync)
    except (RuntimeError, ValueError) as exc:
        raise TrainingError(f"trainer.fit failed: {exc}") from exc
    if result.is_global_zero:
        log_event(log, "fitted", stage="train", fit_s=round(result.fit_s, 2), epochs_run=result.epochs_run,
                  best_epoch=result.best_epoch, best_checkpoint=str(result.best_checkpoint))
    return result


def held_out_inputs(data: VerifiedDataset) -> dict[str, np.ndarray]:
    iq, online, rx = data.model_inputs(data.indices("test")[:PARITY_SESSIONS])
    return {"iq": iq, "rx_position": rx, "rx_online": online}


def check_options(options: JobOptions) -> None:
    """Flag combinations that cannot work, refused before any download or MLflow run."""
    if options.export_only and options.checkpoint is None:
        raise ConfigError("--export_only needs --checkpoint", stage="train")
    if options.export_only and options.resume_training:
        raise ConfigError("--export_only and --resume_training exclude each other", stage="train")


def run_job(settings: Settings, config: TrainConfig, options: JobOptions) -> dict | None:
    """The whole job. Returns the summary that `train --json` prints (None on DDP ranks other than zero)."""
    from training.evaluation import baseline_scores
    from training.fit import is_global_zero
    from training.registry import ModelRegistry, mlflow_errors

    check_options(options)
    started = time.monotonic()
    data = open_dataset(settings, config, options.data_uri)
    log_event(log, "dataset verified", stage="data", dataset=data.uri,
              sessions={s: int(len(data.indices(s))) for s in ("train", "val", "test")})
    key = options.idempotency_key or job_key(
        data.manifest.dataset_id, data.manifest.version, config.config_hash(), export_only=options.export_only,
        checkpoint=str(options.checkpoint) if options.export_only else None)
    registry = ModelRegistry(settings.mlflow_tracking_uri, settings.model_name,
                             open_store(settings.models_uri, settings.s3.credentials()))
    existing = registry.find(key)
    if existing is not None:
        log_event(log, "already registered", stage="register", idempotency_key=key,
                  model_version=existing[0].model_version)
        return existing_summary(settings, options, data, *existing)
    module = build_module(data, config, options.checkpoint if options.export_only else None)
    with mlflow_errors("start run"):
        logger = build_logger(settings, options, data)
        logger.log_hyperparams({**config.model_dump(), "config_hash": config.config_hash()})
        if is_global_zero():  # the service reads one "started" per job
            log_event(log, "started", stage="train", mlflow_run_id=logger.run_id)
    try:
        checkpoint_dir = options.checkpoint_dir or settings.job_checkpoint_dir(options.job_id)
        fitted = train_model(settings, module, data, config, options, checkpoint_dir, logger)
        if not fitted.is_global_zero:
            return None  # DDP's extra ranks only help fit; rank zero evaluates, exports and registers
        best = load_net(fitted.best_checkpoint)
        with mlflow_errors("log the model's shape"):
            logger.log_hyperparams(best.describe())  # after fit: a radio map's shapes are the fit's
        with ThreadPoolExecutor(1, thread_name_prefix="baselines") as beside:
            # the baselines need the data alone: they are scored while the model is calibrated and exported
            baselines = beside.submit(baseline_scores, data, settings.cache_dir)
            calibrate_covariance(best, data)
            evaluation, registration = export_and_register(settings, config, options, data, best, baselines, fitted,
                                                           logger, registry, key)
    except BaseException:
        with mlflow_errors("end run"):
            logger.experiment.set_terminated(logger.run_id, "FAILED")
        raise
    with mlflow_errors("end run"):
        logger.experiment.set_terminated(logger.run_id, "FINISHED")
    log_event(log, "registered", stage="register", model_version=registration.model_version,
              aliases=registration.aliases, elapsed_s=round(time.monotonic() - started, 2))
    return summary(settings, options, data, logger.run_id, evaluation, registration, fitted)


def load_net(checkpoint: Path):
    from training.fit import LocalizationModule

    return LocalizationModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=True).net.eval()


def calibrate_covariance(net, data: VerifiedDataset) -> float:
    """Fit the post-hoc variance scale on the validation split and set it in the model (and so the export)."""
    from training.calibration import fit_variance_scale
    from training.evaluation import predict

    val = data.indices("val")
    net.covariance_scale.fill_(1.0)
    pred, cov = predict(net, data, val)
    scale = fit_variance_scale(pred, cov, data.emitter[val, :2])
    net.covariance_scale.fill_(scale)
    log_event(log, "calibrated", stage="train", covariance_scale=round(scale, 4), val_sessions=int(len(val)))
    return scale


def export_and_register(settings: Settings, config: TrainConfig, options: JobOptions, data: VerifiedDataset, net,
                        baselines: Future, fitted, logger, registry, key: str):
    """model.onnx + parity, the test split's scores (the model's, and the `baselines` when they are
    ready), the run's metrics and plot, then the card and the registry version: (evaluation, registration)."""
    from training.card import build_card
    from training.evaluation import evaluate
    from training.export import export_and_check
    from training.registry import mlflow_errors

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_info, parity = export_and_check(net, onnx_path, held_out_inputs(data),
                                             samples=data.manifest.samples_per_capture,
                                             example_receivers=len(data.receivers), graphs_dir=settings.cache_dir)
        log_event(log, "exported", stage="export", onnx_bytes=onnx_info["bytes"], parity=parity["max_abs_diff"])
        evaluation = evaluate(net, data, baselines.result())
        log_event(log, "evaluated", stage="train", metrics=evaluation.metrics, baselines=evaluation.baselines)
        with mlflow_errors("log results"):
            record_run(logger, evaluation, data, Path(tmp))
        card = build_card(model_name=settings.model_name, onnx=onnx_info, data=data, config=config,
                          job_id=options.job_id, metrics=evaluation.metrics, parity=parity,
                          mlflow_run_id=logger.run_id, epochs_run=fitted.epochs_run, best_epoch=fitted.best_epoch,
                          net_covariance_scale=float(net.covariance_scale))
        return evaluation, registry.publish(
            run_id=logger.run_id, onnx_path=onnx_path, card=card, data=data, test_idx=evaluation.indices,
            median_error_m=evaluation.metrics["median_error_m"], parity_passed=parity["passed"],
            tags={"job_id": options.job_id, "idempotency_key": key, "dataset_id": data.manifest.dataset_id,
                  "dataset_version": str(data.manifest.version), "config_hash": config.config_hash()},
            permit=partial(ask_for_permit, log_event, log) if options.registration_permit else None)


def record_run(logger, evaluation, data: VerifiedDataset, workdir: Path) -> None:
    """Test metrics, baseline metrics and the results plot, on the MLflow run."""
    from mlflow.entities import Metric

    from training.plots import plot_results

    client, run_id, now_ms = logger.experiment, logger.run_id, int(time.time() * 1000)
    values = {**{f"test_{key}": value for key, value in evaluation.metrics.items()},
              **{f"baseline_{method}_{key}": value for method, metrics in evaluation.baselines.items()
                 for key, value in metrics.items()}}
    # one round trip for all of them, not one per metric (16 for the tiny job)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now_ms, 0) for key, value in values.items()])
    plot = plot_results(workdir / "test_results.png", receivers_latlon=data.rx_position[:, :2],
                        true_latlon=evaluation.true_latlon, pred_latlon=evaluation.pred_latlon,
                        cov_m2=evaluation.cov_m2, errors_by_method=evaluation.errors_by_method,
                        title=f"{data.manifest.dataset_id} v{data.manifest.version}: test split")
    client.log_artifact(run_id, str(plot), "plots")


def mlflow_ref(settings: Settings, run_id: str) -> dict:
    """Where the run is, and how to look at it: the UI command when embedded, the server's URL otherwise."""
    uri = settings.mlflow_tracking_uri
    mlflow = shlex.quote(str(Path(sys.executable).with_name("mlflow")))  # the environment's own: not on PATH
    ui = f"{mlflow} ui --backend-store-uri {uri}" if uri.startswith("sqlite") else uri
    return {"tracking_uri": uri, "run_id": run_id, "ui": ui}


def summary(settings: Settings, options: JobOptions, data: VerifiedDataset, run_id: str, evaluation, registration,
            fitted) -> dict:
    return {
        "job_id": options.job_id,
        "dataset": {"id": data.manifest.dataset_id, "version": data.manifest.version, "uri": data.uri},
        "model": registration.to_dict(),
        "mlflow": mlflow_ref(settings, run_id),
        "training": {"epochs_run": fitted.epochs_run, "best_epoch": fitted.best_epoch,
                     "best_checkpoint": str(fitted.best_checkpoint), "fit_s": round(fitted.fit_s, 3)},
        "metrics": evaluation.metrics,
        "baselines": evaluation.baselines,
        "sessions": {s: int(len(data.indices(s))) for s in ("train", "val", "test")},
    }


def existing_summary(settings: Settings, options: JobOptions, data: VerifiedDataset, registration, card: dict) -> dict:
    """What a replayed job reports: the version an earlier job registered, nothing trained again."""
    return {
        "job_id": options.job_id,
        "already_registered_by": card["training"]["job_id"],
        "dataset": {"id": data.manifest.dataset_id, "version": data.manifest.version, "uri": data.uri},
        "model": registration.to_dict(),
        "mlflow": mlflow_ref(settings, card["mlflow_run_id"]),
        "training": {"epochs_run": card["training"]["epochs_run"], "best_epoch": card["training"]["best_epoch"]},
        "metrics": card["metrics"],
        "baselines": {},
        "sessions": card["training"]["sessions"],
    }
