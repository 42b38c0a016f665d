"""The `radio-map` preset's training step: a closed-form fit in place of `trainer.fit`.

`fit.fit` hands a `radio-map` module here. The map is fitted on the training split and its
choices tuned on the validation split (`radio_map_fit`); the result is written as a Lightning
checkpoint (state and hyperparameters, the map's shapes included), so `load_from_checkpoint`,
calibration, evaluation and export treat it like any other model. Resuming refits: the fit is
deterministic and takes about as long as one epoch of the `small` net.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from training.datasets.reader import VerifiedDataset
from foundation.logs import log_event
from training.baselines.power import DETECTION_MARGIN_DB
from training.evaluation import noise_floor_dbm, session_powers
from training.radio_map.fit import Sessions, fit_radio_map

log = logging.getLogger(__name__)
RADIO_MAP = "radio-map"  # the preset's name (TrainConfig.preset)
SENTINEL_SHARE = 0.01  # this share of online captures at exactly the minimum power: a reported floor
REPORTED_FLOOR_MARGIN_DB = 0.5  # heard: above a reported floor by this much (the bench's POWDER setting)
MIN_MARGIN_DB = 1.0  # heard: above a thermal floor by at least this much (the oracle's censoring margin)
NOISE_SPREADS = 8.0  # ... and by this many spreads of a capture's noise power estimate (1.1 dB at 1024 samples)


def noise_floor_of(power_dbm: np.ndarray, online: np.ndarray, sample_rate_hz: float,
                   samples: int) -> tuple[float, np.ndarray, float]:
    """(floor dBm, each receiver's floor above it [R] dB, detection margin dB) for these captures.

    Measurements that report "not heard" as a fixed value (POWDER's −101) pile up at their
    minimum: that value is every receiver's floor and anything above it by a fraction of a dB
    was heard. Otherwise the floor is thermal noise in the capture's bandwidth (dataset.md),
    and each receiver's own (its gain error scales the noise too) is where its noise-only
    captures pile up (`receiver_floors_dbm`). Heard is then above it by the oracle's 1 dB, or by
    `NOISE_SPREADS` times the spread of a noise power estimated from `samples` samples if wider.
    """
    values = power_dbm[online & np.isfinite(power_dbm)]
    if values.size:
        lowest = float(values.min())
        if np.mean(values <= lowest + 0.01) >= SENTINEL_SHARE:
            return lowest, np.zeros(power_dbm.shape[1]), REPORTED_FLOOR_MARGIN_DB
    thermal = noise_floor_dbm(sample_rate_hz)
    spread_db = 10.0 / math.log(10.0) / math.sqrt(samples)  # std of 10·log10 of a mean of `samples` |x|²
    floors = receiver_floors_dbm(power_dbm, online, thermal, NOISE_SPREADS * spread_db)
    return thermal, floors - thermal, max(MIN_MARGIN_DB, NOISE_SPREADS * spread_db)


def receiver_floors_dbm(power_dbm: np.ndarray, online: np.ndarray, default_dbm: float, window_db: float) -> np.ndarray:
    """[R] per receiver: the median of its captures within `window_db` of its lowest, when at
    least `SENTINEL_SHARE` of them are there (noise alone); `default_dbm` for one that always hears."""
    floors = np.full(power_dbm.shape[1], default_dbm)
    for r in range(power_dbm.shape[1]):
        values = power_dbm[online[:, r] & np.isfinite(power_dbm[:, r]), r]
        near_lowest = values[values <= values.min() + window_db] if values.size else values
        if values.size and near_lowest.size >= SENTINEL_SHARE * values.size:
            floors[r] = float(np.median(near_lowest))
    return floors


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
    manifest = data.manifest
    floor, offsets, margin = noise_floor_of(train.power_dbm, train.online, manifest.sample_rate_hz,
                                            manifest.samples_per_capture)
    net, chosen = fit_radio_map(train, split_sessions(data, "val"), data.rx_position, floor, margin,
                                samples=manifest.samples_per_capture, sample_rate_hz=manifest.sample_rate_hz,
                                floor_offset_db=offsets)
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
