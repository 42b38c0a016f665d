"""The training job as a recipe: data, model, fit, export, evaluate, register.

`run_job` is what the training child runs, in its own process. Each step is a plain function that
can be called alone; the settings object and the job's specification are built once by the caller
and passed down. The model is the chosen family's (`training.families`, by preset): the recipe asks
it for a fit, or for the network a checkpoint holds, and then calibrates, exports, evaluates and
registers that network whatever its family. The baselines, which need the data alone, are scored
in a thread beside the model's calibration and export.

Raises: DatasetError (data), ConfigError, TrainingError (train), ExportError (export),
RegistryError / StorageUnavailable (register).
"""

from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foundation import checkpoint_store
from foundation.child_protocol import JobSpec, Started, channel
from foundation.train_config import TrainConfig, job_key
from training.datasets.reader import DatasetReader, VerifiedDataset
from foundation.errors import ConfigError, TrainingError
from foundation.logs import log_event
from foundation.object_store import open_store
from foundation.settings import Settings
from training.family import Family, FitResult, FitRun, is_global_zero
from training.tracking import TrackingRun

log = logging.getLogger(__name__)
PARITY_SESSIONS = 16


@dataclass(frozen=True)
class Job:
    """One job as it runs: the settings, what it was told and its verified data (what every step reads)."""

    settings: Settings
    spec: JobSpec
    data: VerifiedDataset

    @property
    def key(self) -> str:
        """The identity of its outcome: the service's key, else the dataset version, configuration and checkpoint."""
        spec, manifest = self.spec, self.data.manifest
        return spec.idempotency_key or job_key(
            manifest.dataset_id, manifest.version, spec.config.config_hash(), export_only=spec.export_only,
            checkpoint=str(spec.checkpoint) if spec.export_only else None)


@dataclass(frozen=True)
class Exported:
    onnx_path: Path
    onnx: dict  # export_onnx's description: sha256, bytes, opset, inputs, outputs
    parity: dict  # check_parity's report


def open_dataset(settings: Settings, config: TrainConfig, uri: str) -> VerifiedDataset:
    reader = DatasetReader(uri, cache_dir=settings.cache_dir, credentials=settings.s3.credentials(),
                           allowed_locations=settings.allowed_dataset_locations)
    return reader.open(validation_split=config.validation_split, test_split=config.test_split,
                       min_labelled_sessions=config.min_labelled_sessions,
                       spatial_block_fraction=config.spatial_block_fraction,
                       spatial_buffer_fraction=config.spatial_buffer_fraction)


def check_spec(spec: JobSpec) -> None:
    """Flag combinations that cannot work, refused before any download or MLflow run."""
    if spec.export_only and spec.checkpoint is None:
        raise ConfigError("--export_only needs --checkpoint", stage="train")
    if spec.export_only and spec.resume_training:
        raise ConfigError("--export_only and --resume_training exclude each other", stage="train")


def run_job(settings: Settings, spec: JobSpec) -> dict | None:
    """The whole job. Returns the summary that `train --json` prints (None on DDP ranks other than zero)."""
    from training.evaluation import baseline_scores
    from training.families import FAMILIES
    from training.registry import ModelRegistry
    from training.summary import job_summary, mlflow_ref, replayed_summary

    check_spec(spec)
    started = time.monotonic()
    job = Job(settings, spec, open_dataset(settings, spec.config, spec.data_uri))
    log_event(log, "dataset verified", stage="data", dataset=job.data.uri,
              sessions={s: int(len(job.data.indices(s))) for s in ("train", "val", "test")})
    registry = ModelRegistry(settings.mlflow_tracking_uri, settings.model_name,
                             open_store(settings.models_uri, settings.s3.credentials()))
    existing = registry.find(job.key)
    if existing is not None:
        log_event(log, "already registered", stage="register", idempotency_key=job.key,
                  model_version=existing[0].model_version)
        registration, card = existing
        return replayed_summary(spec.job_id, job.data, mlflow_ref(settings.mlflow_tracking_uri, card["mlflow_run_id"]),
                                registration, card)
    family = FAMILIES[spec.config.preset]
    given = load_checkpoint(job, family) if spec.export_only else None  # refused before any MLflow run
    tracking = start_tracking(job)
    try:
        fitted = given if spec.export_only else fit_model(job, family, tracking)
        if not fitted.is_global_zero:
            return None  # DDP's extra ranks only help fit; rank zero evaluates, exports and registers
        net = fitted.net
        tracking.log_params(net.describe())  # after fit: a radio map's shapes are the fit's
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1, thread_name_prefix="baselines") as beside:
            # the baselines need the data alone: they are scored while the model is calibrated and exported
            baselines = beside.submit(baseline_scores, job.data, settings.cache_dir)
            calibrate_covariance(net, job.data)
            exported = export_model(job, net, Path(tmp))
            evaluation = evaluate_model(net, job.data, baselines.result(), tracking, Path(tmp))
            registration = register(job, registry, tracking.run_id, fitted, exported, evaluation)
    except BaseException:
        tracking.finish("FAILED")
        raise
    tracking.finish("FINISHED")
    log_event(log, "registered", stage="register", model_version=registration.model_version,
              aliases=registration.aliases, elapsed_s=round(time.monotonic() - started, 2))
    return job_summary(spec.job_id, job.data, mlflow_ref(settings.mlflow_tracking_uri, tracking.run_id), registration,
                       evaluation, fitted)


def load_checkpoint(job: Job, family: Family) -> FitResult:
    """`--export_only`: the network `--checkpoint` holds, if it fits the job's preset and captures."""
    checkpoint, config = job.spec.checkpoint, job.spec.config
    if not is_global_zero():
        return FitResult.extra_rank(epochs_run=None, fit_s=0.0)  # one export per job, not one per DDP rank
    if not checkpoint.is_file():
        raise ConfigError(f"--checkpoint {checkpoint}: no such file", stage="train")
    net = family.load(checkpoint)
    shape, samples = net.describe(), job.data.manifest.samples_per_capture
    if shape["preset"] != config.preset:
        raise ConfigError(f"--checkpoint {checkpoint} holds a {shape['preset']!r} network, the job's preset is "
                          f"{config.preset!r}", stage="train")
    if shape["samples"] != samples:
        raise ConfigError(f"--checkpoint {checkpoint} expects {shape['samples']} samples per capture, "
                          f"the dataset has {samples}", stage="train")
    return FitResult.loaded(net, checkpoint)


def start_tracking(job: Job) -> TrackingRun:
    """The job's MLflow run with its configuration, and the service told that the job started.
    Rank zero's alone: one run and one "started" per job, not one per DDP rank."""
    settings, spec, manifest, config = job.settings, job.spec, job.data.manifest, job.spec.config
    if not is_global_zero():
        return TrackingRun(settings.mlflow_tracking_uri, run_id=None)
    tracking = TrackingRun.start(
        settings.mlflow_tracking_uri, spec.experiment_name, settings.mlflow_artifacts_uri,
        run_name=f"{spec.run_name_prefix}-{manifest.dataset_id}-v{manifest.version}-{spec.job_id[:8]}",
        tags={"job_id": spec.job_id, "dataset_id": manifest.dataset_id, "dataset_version": str(manifest.version)})
    tracking.log_params({**config.model_dump(), "config_hash": config.config_hash(), **job.data.split.params()})
    log_event(log, "started", stage="train", mlflow_run_id=tracking.run_id)
    channel().send(Started(mlflow_run_id=tracking.run_id))
    return tracking


def resume_checkpoint(spec: JobSpec, checkpoint_dir: Path) -> Path | None:
    if not spec.resume_training:
        return None
    checkpoint = spec.checkpoint or checkpoint_dir / "last.ckpt"
    if not checkpoint.is_file():
        raise ConfigError(f"--resume_training: checkpoint {checkpoint} does not exist", stage="train")
    return checkpoint


def fit_model(job: Job, family: Family, tracking: TrackingRun) -> FitResult:
    """The family's fit; its checkpoints in the job's folder, and in object storage when the settings name one."""
    settings, spec = job.settings, job.spec
    checkpoint_dir = spec.checkpoint_dir or settings.job_checkpoint_dir(spec.job_id)
    uploads = checkpoint_store.job_store(settings.checkpoints_uri, spec.job_id, settings.s3.credentials()) \
        if settings.checkpoints_uri else None
    run = FitRun(checkpoint_dir, resume_checkpoint(spec, checkpoint_dir), tracking, uploads)
    try:
        fitted = family.fit(job.data, spec.config, run)
    except (RuntimeError, ValueError) as exc:
        raise TrainingError(f"fit failed: {exc}") from exc
    if fitted.is_global_zero:
        log_event(log, "fitted", stage="train", fit_s=round(fitted.fit_s, 2), epochs_run=fitted.epochs_run,
                  best_epoch=fitted.best_epoch, best_checkpoint=str(fitted.best_checkpoint))
    return fitted


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


def held_out_inputs(data: VerifiedDataset) -> dict[str, np.ndarray]:
    iq, online, rx = data.model_inputs(data.indices("test")[:PARITY_SESSIONS])
    return {"iq": iq, "rx_position": rx, "rx_online": online}


def export_model(job: Job, net, workdir: Path) -> Exported:
    """`workdir`/model.onnx, checked against the network on held-out sessions."""
    from training.export import export_and_check

    data, onnx_path = job.data, workdir / "model.onnx"
    onnx, parity = export_and_check(net, onnx_path, held_out_inputs(data), samples=data.manifest.samples_per_capture,
                                    example_receivers=len(data.receivers), graphs_dir=job.settings.cache_dir)
    log_event(log, "exported", stage="export", onnx_bytes=onnx["bytes"], parity=parity["max_abs_diff"])
    return Exported(onnx_path, onnx, parity)


def evaluate_model(net, data: VerifiedDataset, baselines: tuple[dict, dict], tracking: TrackingRun,
                   workdir: Path):
    """The test split's scores, the model's beside the `baselines`' (`baseline_scores`), on the MLflow run too."""
    from training.evaluation import evaluate

    evaluation = evaluate(net, data, baselines)
    log_event(log, "evaluated", stage="train", metrics=evaluation.metrics, baselines=evaluation.baselines)
    record_run(tracking, evaluation, data, workdir)
    return evaluation


def register(job: Job, registry, run_id: str, fitted: FitResult, exported: Exported, evaluation):
    """The card, then the registry version (`ModelRegistry.publish`, behind the service's permit when asked)."""
    from training.card import build_card

    spec, data, config = job.spec, job.data, job.spec.config
    card = build_card(model_name=job.settings.model_name, onnx=exported.onnx, data=data, config=config,
                      job_id=spec.job_id, metrics=evaluation.metrics, parity=exported.parity, mlflow_run_id=run_id,
                      epochs_run=fitted.epochs_run, best_epoch=fitted.best_epoch,
                      net_covariance_scale=float(fitted.net.covariance_scale))
    return registry.publish(
        run_id=run_id, onnx_path=exported.onnx_path, card=card, data=data, test_idx=evaluation.indices,
        median_error_m=evaluation.metrics["median_error_m"], parity_passed=exported.parity["passed"],
        baselines=evaluation.baselines,
        tags={"job_id": spec.job_id, "idempotency_key": job.key, "dataset_id": data.manifest.dataset_id,
              "dataset_version": str(data.manifest.version), "config_hash": config.config_hash()},
        permit=channel().ask_permit if spec.registration_permit else None)


def record_run(tracking: TrackingRun, evaluation, data: VerifiedDataset, workdir: Path) -> None:
    """Test metrics, baseline metrics and the results plot, on the MLflow run."""
    from training.plots import plot_results

    tracking.log_metrics({**{f"test_{key}": value for key, value in evaluation.metrics.items()},
                          **{f"baseline_{method}_{key}": value for method, metrics in evaluation.baselines.items()
                             for key, value in metrics.items()}})
    plot = plot_results(workdir / "test_results.png", receivers_latlon=data.rx_position[:, :2],
                        true_latlon=evaluation.true_latlon, pred_latlon=evaluation.pred_latlon,
                        cov_m2=evaluation.cov_m2, errors_by_method=evaluation.errors_by_method,
                        title=f"{data.manifest.dataset_id} v{data.manifest.version}: test split")
    tracking.log_artifact(plot, "plots")
