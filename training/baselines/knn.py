"""kNN fingerprinting: positions of the training sessions that received the most similar powers.

A fingerprint is each receiver's power in dB above the noise floor, clipped at 0, so "not
heard" is a value that matches other "not heard" (the transmitter was far from that receiver).
`KnnParams` holds every choice the method makes; `tune_knn` picks them on the validation
split, and the test split is then scored with the training sessions as the reference set.
Arrays as in `training.baselines.power`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Literal

import numpy as np

from training.geodesy import haversine_m
from training.baselines.power import ARRAY_CHUNK_BYTES

K_CHOICES = (1, 2, 3, 5, 8, 12, 20, 30)
WEIGHTS = ("uniform", "inverse", "inverse_square")
METRICS = ("rms", "mean_abs")
OFFLINE = ("skip", "not_heard")


@dataclass(frozen=True)
class KnnParams:
    k: int = 5
    weights: Literal["uniform", "inverse", "inverse_square"] = "inverse"  # w = 1, 1/dist or 1/dist²
    metric: Literal["rms", "mean_abs"] = "rms"  # dB difference averaged over the receivers compared: L2 or L1
    # "skip": compare only receivers online in both sessions; "not_heard": an offline receiver
    # reads as one that heard nothing, so every receiver is compared.
    offline: Literal["skip", "not_heard"] = "skip"


def knn_fingerprint(train_power_dbm, train_online, train_latlon, query_power_dbm, query_online, *,
                    noise_floor_dbm: float, params: KnnParams = KnnParams()) -> np.ndarray:
    """[N, 2] lat/lon: the weighted mean position of the `params.k` training sessions nearest to
    each query in fingerprint space (pass the TRAINING sessions as the reference).

    Pairs sharing no compared receiver are never neighbours. With inverse weights, a query
    identical to a training fingerprint (distance 0) takes that position (the mean of all
    such). Queries with no possible neighbour get NaN.
    """
    dist, nearest = _neighbours(train_power_dbm, train_online, query_power_dbm, query_online, noise_floor_dbm,
                                params, params.k)
    return _weighted_mean(dist, np.asarray(train_latlon, dtype=np.float64)[nearest], params.weights)


def tune_knn(train_power_dbm, train_online, train_latlon, val_power_dbm, val_online, val_latlon, *,
             noise_floor_dbm: float) -> tuple[KnnParams, float]:
    """The `KnnParams` with the lowest median error on the validation sessions, and that median (m)."""
    train_latlon, val_latlon = (np.asarray(a, dtype=np.float64) for a in (train_latlon, val_latlon))
    if val_latlon.shape[0] == 0:
        return KnnParams(), float("nan")
    k_max = min(max(K_CHOICES), train_latlon.shape[0])
    best, best_median = KnnParams(), np.inf
    for metric, offline in product(METRICS, OFFLINE):
        probe = KnnParams(k=k_max, metric=metric, offline=offline)
        dist, nearest = _neighbours(train_power_dbm, train_online, val_power_dbm, val_online, noise_floor_dbm,
                                    probe, k_max)
        for k, weights in product((k for k in K_CHOICES if k <= k_max), WEIGHTS):
            pred = _weighted_mean(dist[:, :k], train_latlon[nearest[:, :k]], weights)
            error = haversine_m(pred[:, 0], pred[:, 1], val_latlon[:, 0], val_latlon[:, 1])
            median = float(np.median(np.where(np.isfinite(error), error, np.inf)))
            if median < best_median:
                best, best_median = KnnParams(k=k, weights=weights, metric=metric, offline=offline), median
    return best, best_median


def _fingerprints(power_dbm, online, noise_floor_dbm: float, offline: str) -> tuple[np.ndarray, np.ndarray]:
    """dB above the noise floor (clipped at 0; 0 where offline) [N, R] and the compared mask."""
    online = np.asarray(online, dtype=bool)
    power = np.nan_to_num(np.asarray(power_dbm, dtype=np.float64), nan=-np.inf, posinf=np.inf)
    x = np.where(online, np.maximum(power, noise_floor_dbm) - noise_floor_dbm, 0.0)
    return x, (online if offline == "skip" else np.ones_like(online))


def _neighbours(train_power, train_online, query_power, query_online, noise_floor_dbm: float,
                params: KnnParams, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances [n, k] (ascending, inf where nothing is compared) and training indices [n, k] of
    each query's k nearest training fingerprints. Chunked so one [queries, train, receivers]
    array stays near 16 MB."""
    train_x, train_m = _fingerprints(train_power, train_online, noise_floor_dbm, params.offline)
    query_x, query_m = _fingerprints(query_power, query_online, noise_floor_dbm, params.offline)
    k = min(k, train_x.shape[0])
    power = 2.0 if params.metric == "rms" else 1.0
    dist = np.empty((query_x.shape[0], k))
    nearest = np.empty((query_x.shape[0], k), dtype=np.int64)
    chunk = max(1, ARRAY_CHUNK_BYTES // (8 * train_x.size))
    for start in range(0, query_x.shape[0], chunk):
        part = slice(start, start + chunk)
        both = query_m[part, None, :] & train_m[None, :, :]
        diff = np.abs(np.where(both, query_x[part, None, :] - train_x[None, :, :], 0.0)) ** power
        count = both.sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            full = np.where(count > 0, (diff.sum(axis=-1) / count) ** (1.0 / power), np.inf)
        pick = np.argpartition(full, k - 1, axis=1)[:, :k]
        picked = np.take_along_axis(full, pick, axis=1)
        order = np.argsort(picked, axis=1, kind="stable")
        dist[part], nearest[part] = np.take_along_axis(picked, order, 1), np.take_along_axis(pick, order, 1)
    return dist, nearest


def _weighted_mean(dist, latlon, weights: str) -> np.ndarray:
    """[n, 2] Σ w·latlon / Σ w over finite distances; inverse weights take exact matches alone when any exist."""
    finite = np.isfinite(dist)
    if weights == "uniform":
        w = finite.astype(np.float64)
    else:
        exact = dist == 0.0
        with np.errstate(divide="ignore"):
            inverse = np.where(finite, 1.0 / dist ** (1.0 if weights == "inverse" else 2.0), 0.0)
        w = np.where(exact.any(axis=1, keepdims=True), exact, inverse)
    total = w.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("nk,nkc->nc", w, latlon) / total
