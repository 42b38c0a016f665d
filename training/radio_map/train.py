"""The radio map's training step: the noise floor of the captures, then the closed-form fit.

The map is fitted on the training split and its choices tuned on the validation split
(`training.radio_map.fit`); the fit reports as one epoch would (a progress line, its metrics on
the MLflow run). `training.radio_map.builder` keeps the fitted network in a file of its own.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from training.datasets.reader import VerifiedDataset
from foundation.child_protocol import Progress, channel
from foundation.logs import log_event
from training.evaluation import noise_floor_dbm, session_powers
from training.radio_map.fit import Sessions, fit_radio_map
from training.radio_map.model import RadioMapNet
from training.tracking import TrackingRun

log = logging.getLogger(__name__)
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


def fit_closed_form(data: VerifiedDataset, tracking: TrackingRun) -> tuple[RadioMapNet, float]:
    """The fitted map and its val median error (m), its choices logged on `tracking`. Raises ValueError
    when the training split has fewer than two sessions with a heard receiver."""
    train = split_sessions(data, "train")
    manifest = data.manifest
    floor, offsets, margin = noise_floor_of(train.power_dbm, train.online, manifest.sample_rate_hz,
                                            manifest.samples_per_capture)
    net, chosen = fit_radio_map(train, split_sessions(data, "val"), data.rx_position, floor, margin,
                                samples=manifest.samples_per_capture, sample_rate_hz=manifest.sample_rate_hz,
                                floor_offset_db=offsets, holdout_m=(data.split.frame.block_m, data.split.frame.buffer_m))
    tracking.log_metrics({f"radio_map_{k}": float(v) for k, v in chosen.items()}, step=0)
    log_event(log, "radio map fitted", stage="train", noise_floor_dbm=floor, detection_margin_db=margin,
              **{k: round(float(v), 3) for k, v in chosen.items()})
    return net, chosen["val_median_error_m"]


def report_closed_form(tracking: TrackingRun, val_median_error_m: float) -> None:
    """The closed-form fit as one epoch of a job: its progress line and event, its val metric on the run."""
    metrics = {"val_median_error_m": round(val_median_error_m, 1)}
    tracking.log_metrics(metrics, step=0)
    log_event(log, "progress", stage="train", epoch=1, max_epochs=1, metrics=metrics, eta_s=0.0)
    channel().send(Progress(epoch=1, max_epochs=1, metrics=metrics, eta_s=0.0))
