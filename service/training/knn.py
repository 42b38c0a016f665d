"""kNN fingerprinting: positions of the training sessions that received the most similar powers.

Arrays as in `service.training.baselines`.
"""

from __future__ import annotations

import numpy as np

from service.training.baselines import ARRAY_CHUNK_BYTES


def knn_fingerprint(train_power_dbm, train_online, train_latlon, query_power_dbm, query_online, *,
                    k: int = 5, noise_floor_dbm: float) -> np.ndarray:
    """[N, 2] lat/lon: inverse-distance weighted mean of the k training sessions nearest to
    each query in received-power space (fingerprinting; pass the TRAINING sessions).

    Powers are clipped from below at the noise floor, so "not heard" is a value that
    matches other "not heard" (the transmitter was far from that receiver). The distance
    between two sessions is the RMS difference in dB over the receivers online in both;
    pairs sharing no online receiver are never neighbours. A query identical to a training
    fingerprint (distance 0) takes that training position (the mean of all such). Queries
    with no possible neighbour get NaN. Work is chunked over queries so one
    [queries, train] array stays near 16 MB.
    """
    train_x, train_m = _fingerprints(train_power_dbm, train_online, noise_floor_dbm)
    query_x, query_m = _fingerprints(query_power_dbm, query_online, noise_floor_dbm)
    train_latlon = np.asarray(train_latlon, dtype=np.float64)
    k = min(k, train_x.shape[0])
    out = np.full((query_x.shape[0], 2), np.nan)
    if k <= 0:
        return out
    chunk = max(1, ARRAY_CHUNK_BYTES // (8 * train_x.shape[0]))
    for start in range(0, query_x.shape[0], chunk):
        part = slice(start, start + chunk)
        approx = _mean_sq_diff(query_x[part], query_m[part], train_x, train_m)
        nearest = np.argpartition(approx, k - 1, axis=1)[:, :k]  # [n, k]
        # Exact distances of the chosen few, so an identical fingerprint gives exactly 0.
        both = query_m[part, None, :] & train_m[nearest]
        diff = np.where(both, query_x[part, None, :] - train_x[nearest], 0.0)
        count = both.sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.where(count > 0, np.sqrt(np.sum(diff * diff, axis=-1) / count), np.inf)
        out[part] = _inverse_distance_mean(dist, train_latlon[nearest])
    return out


def _fingerprints(power_dbm, online, noise_floor_dbm: float) -> tuple[np.ndarray, np.ndarray]:
    """dB above the noise floor (clipped at 0; 0 where offline) [N, R] and the online mask."""
    online = np.asarray(online, dtype=bool)
    power = np.nan_to_num(np.asarray(power_dbm, dtype=np.float64), nan=-np.inf, posinf=np.inf)
    return np.where(online, np.maximum(power, noise_floor_dbm) - noise_floor_dbm, 0.0), online


def _mean_sq_diff(query_x, query_m, train_x, train_m) -> np.ndarray:
    """[n, M] mean squared difference over receivers online in both (inf where none);
    offline entries are 0 in x, so masked sums are plain matrix products."""
    qm, tm = query_m.astype(np.float64), train_m.astype(np.float64)
    sq = (query_x**2) @ tm.T - 2.0 * query_x @ train_x.T + qm @ (train_x**2).T
    count = qm @ tm.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, np.maximum(sq, 0.0) / count, np.inf)


def _inverse_distance_mean(dist, latlon) -> np.ndarray:
    """[n, 2] Σ w·latlon / Σ w with w = 1/dist, or the exact matches alone when any exist."""
    exact = dist == 0.0
    with np.errstate(divide="ignore"):
        weights = np.where(exact.any(axis=1, keepdims=True), exact, np.where(np.isfinite(dist), 1.0 / dist, 0.0))
    total = weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("nk,nkc->nc", weights, latlon) / total
