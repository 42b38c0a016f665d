"""The `radio-map` preset's training step: a closed-form fit in place of `trainer.fit`.

`fit.fit` hands a `radio-map` module here. The map is fitted on the training split and its
choices tuned on the validation split (`radio_map_fit`); the result is written as a Lightning
checkpoint (state and hyperparameters, the map's shapes included), so `load_from_checkpoint`,
calibration, evaluation and export treat it like any other model. Resuming refits: the fit is
deterministic and takes about as long as one epoch of the `small` net.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from service.datasets.reader import VerifiedDataset
from service.logs import log_event
from service.training.baselines import DETECTION_MARGIN_DB
from service.training.evaluation import noise_floor_dbm, session_powers
from service.training.radio_map_fit import Sessions, fit_radio_map

log = logging.getLogger(__name__)
RADIO_MAP = "radio-map"  # the preset's name (TrainConfig.preset)
SENTINEL_SHARE = 0.01  # this share of online captures at exactly the minimum power: a reported floor
REPORTED_FLOOR_MARGIN_DB = 0.5  # heard: above a reported floor by this much (the bench's POWDER setting)


def noise_floor_of(power_dbm: np.ndarray, online: np.ndarray, sample_rate_hz: float) -> tuple[float, float]:
    """(floor dBm, detection margin dB) for these captures.

    Measurements that report "not heard" as a fixed value (POWDER's −101) pile up at their
    minimum: that value is the floor and anything above it by a fraction of a dB was heard.
    Otherwise the floor is thermal noise in the capture's bandwidth (dataset.md), and the
    margin is the baselines' 3 dB, above the noise power's own spread and gain errors.
    """
    values = power_dbm[online & np.isfinite(power_dbm)]
    if values.size:
        lowest = float(values.min())
        if np.mean(values <= lowest + 0.01) >= SENTINEL_SHARE:
            return lowest, REPORTED_FLOOR_MARGIN_DB
    return noise_floor_dbm(sample_rate_hz), DETECTION_MARGIN_DB


def split_sessions(data: VerifiedDataset, split: str) -> Sessions:
    indices = data.indices(split)
    power, online = session_powers(data, indices)
    return Sessions(power, online, data.emitter[indices, :2].astype(np.float64))


def write_checkpoint(module: pl.LightningModule, path: Path) -> Path:
    """A checkpoint `LightningModule.load_from_checkpoint` reads: state, hyperparameters, epoch 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": pl.__version__,
                "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}, path)
    return path


def fit_closed_form(module: pl.LightningModule, data: VerifiedDataset, checkpoint_dir: Path,
                    logger) -> tuple[Path, float]:
    """Fit the map into `module.net` and checkpoint it: (the checkpoint, seconds). Raises ValueError
    when the training split has fewer than two sessions with a heard receiver."""
    started = time.monotonic()
    train = split_sessions(data, "train")
    floor, margin = noise_floor_of(train.power_dbm, train.online, data.manifest.sample_rate_hz)
    net, chosen = fit_radio_map(train, split_sessions(data, "val"), data.rx_position, floor, margin,
                                samples=data.manifest.samples_per_capture,
                                sample_rate_hz=data.manifest.sample_rate_hz)
    module.net = net
    module.hparams["radio_map"] = net.shape_args()
    path = write_checkpoint(module, checkpoint_dir / "last.ckpt")
    fit_s = time.monotonic() - started
    metrics = {"val_median_error_m": round(chosen["val_median_error_m"], 1)}
    if logger is not None:
        logger.log_metrics({**metrics, **{f"radio_map_{k}": float(v) for k, v in chosen.items()}}, step=0)
    log_event(log, "progress", stage="train", epoch=1, max_epochs=1, metrics=metrics, eta_s=0.0)
    log_event(log, "radio map fitted", stage="train", noise_floor_dbm=floor, detection_margin_db=margin,
              **{k: round(float(v), 3) for k, v in chosen.items()})
    return path, fit_s
