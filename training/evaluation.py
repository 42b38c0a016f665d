"""Scoring on the test split: the model, and the classical baselines on the same sessions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.datasets.channel import noise_power_dbm
from training.datasets.verified import VerifiedDataset
from training.baselines import cache as baseline_cache
from training.baselines.power import capture_power_dbm, weighted_centroid
from training.baselines.grid_search import ml_grid_search
from training.baselines.knn import KnnParams, knn_fingerprint, tune_knn
from training.metrics import localization_errors_m, localization_metrics, point_metrics
from training.path_loss import PathLossFit, fit_path_loss

NOISE_FLOOR_DBM_PER_12K5 = -120.0  # dataset.md: noise floor in 12.5 kHz
FIT_SESSIONS_MAX = 2000  # training sessions used to fit the baselines' channel (kNN uses them all)


@dataclass
class Evaluation:
    indices: np.ndarray
    true_latlon: np.ndarray
    pred_latlon: np.ndarray
    cov_m2: np.ndarray
    metrics: dict
    baselines: dict[str, dict] = field(default_factory=dict)
    errors_by_method: dict[str, np.ndarray] = field(default_factory=dict)


def noise_floor_dbm(sample_rate_hz: float) -> float:
    return noise_power_dbm(NOISE_FLOOR_DBM_PER_12K5, sample_rate_hz)


@torch.no_grad()
def predict(net: torch.nn.Module, data: VerifiedDataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions [N,2] and covariances [N,2,2] for the given sessions, in chunks."""
    net.eval()
    positions, covariances = [], []
    for _, iq, online, rx in data.chunks(indices):
        position, cov = net(torch.from_numpy(iq), torch.from_numpy(rx), torch.from_numpy(online))
        positions.append(position.double().numpy())
        covariances.append(cov.double().numpy())
    return np.concatenate(positions), np.concatenate(covariances)


def session_powers(data: VerifiedDataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Capture power in dBm [N,R] and online mask [N,R] for the given sessions."""
    powers, onlines = [], []
    for _, iq, online, _ in data.chunks(indices):
        powers.append(capture_power_dbm(iq))
        onlines.append(online > 0.5)
    return np.concatenate(powers), np.concatenate(onlines)


@dataclass(frozen=True)
class BaselineSetup:
    """What the classical baselines need to know about the measurements."""

    noise_floor_dbm: float  # capture power of an online receiver that heard nothing
    detection_margin_db: float = 3.0  # heard = above the floor by this much
    grid_step_m: float = 1000.0  # maximum-likelihood grid search: cell size ...
    grid_margin_m: float = 20_000.0  # ... and how far beyond the receivers it looks

    @classmethod
    def for_dataset(cls, data: VerifiedDataset) -> "BaselineSetup":
        return cls(noise_floor_dbm=noise_floor_dbm(data.manifest.sample_rate_hz))


@dataclass
class Baselines:
    metrics: dict[str, dict]
    errors: dict[str, np.ndarray]
    path_loss: PathLossFit
    knn: KnnParams  # tuned on the validation split
    knn_val_median_m: float
    test_power: tuple[np.ndarray, np.ndarray]  # capture dBm [N,R] and online [N,R] of the test sessions


def _labelled_powers(data: VerifiedDataset, split: str):
    indices = data.indices(split)
    return (*session_powers(data, indices), data.emitter[indices, :2].astype(np.float64))


def score_baselines(data: VerifiedDataset, test_idx: np.ndarray, true_latlon: np.ndarray, setup: BaselineSetup,
                    known_channels: dict[str, PathLossFit] | None = None) -> Baselines:
    """Weighted centroid, ML grid search (channel fitted on the training split by censored maximum
    likelihood) and kNN (tuned on the validation split, training sessions as reference), on the
    test sessions. Each of `known_channels` adds an ML grid search under that channel (the
    bench's generator truth)."""
    train_power, train_online, train_latlon = _labelled_powers(data, "train")
    noise, margin = setup.noise_floor_dbm, setup.detection_margin_db
    fit = slice(0, FIT_SESSIONS_MAX)
    fitted = fit_path_loss(train_power[fit], data.rx_position, train_online[fit], train_latlon[fit], noise,
                           detection_margin_db=margin)
    knn, knn_val_median = tune_knn(train_power, train_online, train_latlon, *_labelled_powers(data, "val"),
                                   noise_floor_dbm=noise)
    power, online = session_powers(data, test_idx)

    def grid(channel: PathLossFit) -> np.ndarray:
        return ml_grid_search(power, data.rx_position, online, exponent=channel.exponent, noise_floor_dbm=noise,
                              sigma_db=channel.residual_sigma_db, calibration_db=channel.calibration_db,
                              grid_step_m=setup.grid_step_m, margin_m=setup.grid_margin_m, detection_margin_db=margin)

    estimates = {
        "weighted_centroid": weighted_centroid(power, data.rx_position, online, noise_floor_dbm=noise,
                                               detection_margin_db=margin),
        "ml_grid_search": grid(fitted),
        **{name: grid(channel) for name, channel in (known_channels or {}).items()},
        "knn": knn_fingerprint(train_power, train_online, train_latlon, power, online, noise_floor_dbm=noise,
                               params=knn),
    }
    return Baselines(metrics={name: point_metrics(est, true_latlon) for name, est in estimates.items()},
                     errors={name: localization_errors_m(est, true_latlon) for name, est in estimates.items()},
                     path_loss=fitted, knn=knn, knn_val_median_m=knn_val_median, test_power=(power, online))


def baseline_scores(data: VerifiedDataset, cache_dir: Path | None = None) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """(metrics, errors) of the baselines on the test split; kept in `cache_dir` (`baseline_cache`) when given.
    They need the data alone, so a job scores them beside its model's calibration and export."""
    test_idx = data.indices("test")
    setup = BaselineSetup.for_dataset(data)
    key = baseline_cache.baselines_key(data, test_idx, setup) if cache_dir is not None else None
    kept = baseline_cache.load(cache_dir, key) if key else None
    if kept is not None:
        return kept
    baselines = score_baselines(data, test_idx, data.emitter[test_idx, :2].astype(np.float64), setup)
    if key:
        baseline_cache.store(cache_dir, key, baselines.metrics, baselines.errors)
    return baselines.metrics, baselines.errors


def evaluate(net: torch.nn.Module, data: VerifiedDataset,
             baselines: tuple[dict[str, dict], dict[str, np.ndarray]]) -> Evaluation:
    """The model on the test split, beside the baselines' (metrics, errors) on the same sessions (`baseline_scores`)."""
    test_idx = data.indices("test")
    true_latlon = data.emitter[test_idx, :2].astype(np.float64)
    pred, cov = predict(net, data, test_idx)
    metrics, baseline_errors = baselines
    errors = {**baseline_errors, "model": localization_errors_m(pred, true_latlon)}
    return Evaluation(indices=test_idx, true_latlon=true_latlon, pred_latlon=pred, cov_m2=cov,
                      metrics=localization_metrics(pred, cov, true_latlon), baselines=metrics,
                      errors_by_method=errors)
