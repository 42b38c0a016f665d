"""Scoring on the test split: the model, and the classical baselines on the same sessions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from service.datasets.channel import noise_power_dbm
from service.datasets.verified import VerifiedDataset
from service.training.baselines import PathLossFit, capture_power_dbm, fit_path_loss, weighted_centroid
from service.training.grid_search import ml_grid_search
from service.training.knn import knn_fingerprint
from service.training.metrics import localization_errors_m, localization_metrics, point_metrics

NOISE_FLOOR_DBM_PER_12K5 = -120.0  # dataset.md: noise floor in 12.5 kHz
FIT_SESSIONS_MAX = 2000  # training sessions used to fit the baselines' path-loss exponent


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
    test_power: tuple[np.ndarray, np.ndarray]  # capture dBm [N,R] and online [N,R] of the test sessions


def score_baselines(data: VerifiedDataset, test_idx: np.ndarray, true_latlon: np.ndarray,
                    setup: BaselineSetup) -> Baselines:
    """Weighted centroid, ML grid search (exponent fitted on the training split) and kNN, on the test sessions."""
    train_idx = data.indices("train")[:FIT_SESSIONS_MAX]
    train_power, train_online = session_powers(data, train_idx)
    noise, margin = setup.noise_floor_dbm, setup.detection_margin_db
    fitted = fit_path_loss(train_power, data.rx_position, train_online, data.emitter[train_idx, :2], noise,
                           detection_margin_db=margin)
    power, online = session_powers(data, test_idx)
    estimates = {
        "weighted_centroid": weighted_centroid(power, data.rx_position, online, noise_floor_dbm=noise,
                                               detection_margin_db=margin),
        "ml_grid_search": ml_grid_search(power, data.rx_position, online, exponent=fitted.exponent,
                                         noise_floor_dbm=noise, sigma_db=fitted.residual_sigma_db,
                                         grid_step_m=setup.grid_step_m, margin_m=setup.grid_margin_m,
                                         detection_margin_db=margin),
        "knn": knn_fingerprint(train_power, train_online, data.emitter[train_idx, :2], power, online,
                               noise_floor_dbm=noise),
    }
    return Baselines(metrics={name: point_metrics(est, true_latlon) for name, est in estimates.items()},
                     errors={name: localization_errors_m(est, true_latlon) for name, est in estimates.items()},
                     path_loss=fitted, test_power=(power, online))


def evaluate(net: torch.nn.Module, data: VerifiedDataset) -> Evaluation:
    test_idx = data.indices("test")
    true_latlon = data.emitter[test_idx, :2].astype(np.float64)
    pred, cov = predict(net, data, test_idx)
    baselines = score_baselines(data, test_idx, true_latlon, BaselineSetup.for_dataset(data))
    errors = {**baselines.errors, "model": localization_errors_m(pred, true_latlon)}
    return Evaluation(indices=test_idx, true_latlon=true_latlon, pred_latlon=pred, cov_m2=cov,
                      metrics=localization_metrics(pred, cov, true_latlon), baselines=baselines.metrics,
                      errors_by_method=errors)
