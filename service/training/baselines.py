"""Classical localization baselines, scored on the same sessions as the model.

Everything here works from received power alone (`dataset.md`: the location information
in a capture is its power). Arrays are per session × receiver:

- `power_dbm` [N, R]: total capture power in dBm, noise included (`capture_power_dbm`);
- `rx_position` [N, R, 3] or [R, 3]: receiver latitude°, longitude°, altitude m;
- `online` [N, R]: bool; offline receivers carry nothing and are always masked.

`noise_floor_dbm` is the capture's noise power in its bandwidth, which callers compute as
−120 + 10·log10(fs / 12 500). A receiver *heard* the transmitter when its total power is
more than `detection_margin_db` above that floor; an online receiver that did not hear is
still information (the transmitter is probably far from it), which the ML grid search uses.

Distances are horizontal great-circle metres; altitude is ignored (a few hundred metres of
height change the log-distance by far less than shadowing does). Lat/lon are averaged
directly, which is exact in an equirectangular frame and fine away from the antimeridian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from service.geodesy import from_local_en, haversine_m, to_local_en

DETECTION_MARGIN_DB = 3.0
MIN_DISTANCE_M = 100.0  # keeps log10(d) finite when a candidate sits on a receiver
_CHUNK_BYTES = 16 * 2**20  # one [candidates, sessions, receivers] float64 array per chunk
# Refinement: a halving pattern search, (half-width in coarse cells, points per axis) per
# stage. The cost valley can be long and shallow (EIRP and distance trade off), so the
# first stage looks ±2 cells away; the last ends at 1/16 of a cell.
_REFINE_STAGES = ((2.0, 9), (1.0, 9), (0.5, 9), (0.25, 9), (0.125, 9))


@dataclass(frozen=True)
class PathLossFit:
    """Log-distance model P = A_session − 10·n·log10(d), fitted on heard receivers."""

    exponent: float  # n
    residual_sigma_db: float  # shadowing + calibration spread around the fit
    sessions_used: int  # sessions with ≥ 2 heard receivers (one alone says nothing about n)
    measurements_used: int


# ---------------------------------------------------------------------------- power


def capture_power_dbm(iq, *, chunk_sessions: int = 128) -> np.ndarray:
    """[N, R] float64 10·log10(mean(I² + Q²)) of each capture [N, R, S, 2].

    Offline receivers (all-zero captures) give −inf; callers mask them with `online`.
    """
    iq = np.asarray(iq)
    out = np.empty(iq.shape[:2], dtype=np.float64)
    for start in range(0, iq.shape[0], chunk_sessions):
        block = iq[start : start + chunk_sessions].astype(np.float64)
        mean_power_mw = np.einsum("nrsc,nrsc->nr", block, block) / iq.shape[2]
        with np.errstate(divide="ignore"):
            out[start : start + chunk_sessions] = 10.0 * np.log10(mean_power_mw)
    return out


def heard_mask(power_dbm, online, noise_floor_dbm: float,
               detection_margin_db: float = DETECTION_MARGIN_DB) -> np.ndarray:
    """[N, R] bool: online and more than `detection_margin_db` above the noise floor."""
    power = np.nan_to_num(np.asarray(power_dbm, dtype=np.float64), nan=-np.inf)
    return np.asarray(online, dtype=bool) & (power > noise_floor_dbm + detection_margin_db)


def signal_power_dbm(power_dbm, noise_floor_dbm: float) -> np.ndarray:
    """[N, R] signal power with the noise power removed; −inf where not above the floor."""
    excess_mw = 10.0 ** (np.asarray(power_dbm, dtype=np.float64) / 10.0) - 10.0 ** (noise_floor_dbm / 10.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(np.where(excess_mw > 0, excess_mw, 0.0))
    return np.nan_to_num(out, nan=-np.inf)


def _positions(rx_position, n_sessions: int) -> np.ndarray:
    rx = np.asarray(rx_position, dtype=np.float64)
    if rx.ndim == 2:
        rx = np.broadcast_to(rx, (n_sessions, *rx.shape))
    return rx


# ---------------------------------------------------------------------------- centroid


def weighted_centroid(power_dbm, rx_position, online, *, noise_floor_dbm: float,
                      weight_exponent: float = 0.5,
                      detection_margin_db: float = DETECTION_MARGIN_DB) -> np.ndarray:
    """[N, 2] lat/lon: receivers' positions weighted by w = (signal power in mW)^γ.

    The signal power is the total minus the noise floor, so a receiver that hears only
    noise weighs nothing. γ = `weight_exponent`: γ = 1 (linear power) lets the strongest
    receiver take everything, since power falls as d^-n; γ ≈ 1/n would weigh by 1/d. The
    default 0.5 sits between and did best on our synthetic sessions (n = 3, σ = 6 dB).
    Sessions where nobody heard get the plain centroid of the online receivers; sessions
    with no online receiver get NaN (they carry no information at all).
    """
    power = np.asarray(power_dbm, dtype=np.float64)
    online = np.asarray(online, dtype=bool)
    rx = _positions(rx_position, power.shape[0])[..., :2]
    heard = heard_mask(power, online, noise_floor_dbm, detection_margin_db)
    signal = signal_power_dbm(power, noise_floor_dbm)
    # Normalise by each session's strongest receiver so 10^(P/10) cannot overflow.
    strongest = np.max(np.where(heard, signal, -np.inf), axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        rel_db = np.where(heard, signal - strongest, -np.inf)
    weights = np.where(heard, 10.0 ** (weight_exponent * rel_db / 10.0), 0.0)
    nobody_heard = ~heard.any(axis=1)
    weights[nobody_heard] = online[nobody_heard].astype(np.float64)
    total = weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("nr,nrc->nc", weights, np.where(online[..., None], rx, 0.0)) / total


# ---------------------------------------------------------------------------- path loss


def fit_path_loss(power_dbm, rx_position, online, true_latlon, noise_floor_dbm: float, *,
                  detection_margin_db: float = DETECTION_MARGIN_DB) -> PathLossFit:
    """Least-squares path-loss exponent with a free intercept (unknown EIRP) per session.

    Pass the TRAINING sessions only. Uses heard receivers only, with the noise power
    removed; centring within each session eliminates the intercepts exactly. Where many
    receivers sit near the detection threshold, heard-only data are truncated (the far
    receivers that were heard got lucky shadowing), which biases n low: on synthetic
    n = 3, σ = 6 dB sessions with half the receivers heard it came out ≈ 2.3.

    Raises:
        ValueError: fewer than two sessions with two or more heard receivers.
    """
    power = np.asarray(power_dbm, dtype=np.float64)
    true = np.asarray(true_latlon, dtype=np.float64)
    rx = _positions(rx_position, power.shape[0])
    heard = heard_mask(power, online, noise_floor_dbm, detection_margin_db)
    heard &= heard.sum(axis=1, keepdims=True) >= 2
    dist = haversine_m(true[:, None, 0], true[:, None, 1], rx[..., 0], rx[..., 1])
    x = np.where(heard, -10.0 * np.log10(np.maximum(dist, MIN_DISTANCE_M)), 0.0)
    y = np.where(heard, signal_power_dbm(power, noise_floor_dbm), 0.0)
    count = np.maximum(heard.sum(axis=1, keepdims=True), 1)
    xc = np.where(heard, x - x.sum(axis=1, keepdims=True) / count, 0.0)
    yc = np.where(heard, y - y.sum(axis=1, keepdims=True) / count, 0.0)
    sessions = int(heard.any(axis=1).sum())
    measurements = int(heard.sum())
    if sessions < 2 or np.sum(xc * xc) <= 0.0:
        raise ValueError(f"fit_path_loss: only {sessions} sessions with ≥ 2 heard receivers")
    exponent = float(np.sum(xc * yc) / np.sum(xc * xc))
    residual = yc - exponent * xc
    dof = max(measurements - sessions - 1, 1)
    return PathLossFit(exponent=exponent,
                       residual_sigma_db=float(np.sqrt(np.sum(residual**2) / dof)),
                       sessions_used=sessions, measurements_used=measurements)


# ---------------------------------------------------------------------------- ML grid


def _grid_cost(loss_db, signal, heard, censored, threshold_dbm: float, sigma_db: float):
    """[K, n] negative log-likelihood of n sessions at K candidate positions each.

    `loss_db` [K, n, R] is 10·n·log10(d). Heard receivers contribute Gaussian squared
    residuals around P = A − loss, with the EIRP A profiled out as the mean residual;
    online receivers that did not hear contribute −log P(shadowing kept them below the
    threshold) = −log Φ((threshold − P)/σ), a Tobit-style censored likelihood. Unlike a
    hinge penalty, it still ranks candidates when every threshold is comfortably met, so a
    session with one heard receiver lands on it rather than on an arbitrary zero-cost cell.
    """
    count = np.maximum(heard.sum(axis=1), 1)
    resid = np.where(heard, signal + loss_db, 0.0)
    eirp = resid.sum(axis=-1) / count
    resid = np.where(heard, resid - eirp[..., None], 0.0)
    cost = np.einsum("knr,knr->kn", resid, resid) / (2.0 * sigma_db**2)
    # log Φ is the expensive part: evaluate it on censored pairs only, then sum per session.
    session_of_pair = np.nonzero(censored)[0]
    if session_of_pair.size:
        z = (threshold_dbm - eirp[:, session_of_pair] + loss_db[:, censored]) / sigma_db
        per_session = session_of_pair[:, None] == np.arange(censored.shape[0])
        cost -= log_ndtr(z) @ per_session.astype(np.float64)
    return cost


def _candidate_grid(rx_online_latlon, grid_step_m: float, margin_m: float):
    """Lat/lon [G, 2] of a local east/north grid over the receivers ± margin."""
    lat0, lon0 = rx_online_latlon.mean(axis=0)
    east, north = to_local_en(rx_online_latlon[:, 0], rx_online_latlon[:, 1], lat0, lon0)
    axes = [np.arange(v.min() - margin_m, v.max() + margin_m + grid_step_m, grid_step_m)
            for v in (east, north)]
    ee, nn = np.meshgrid(*axes, indexing="xy")
    lat, lon = from_local_en(ee.ravel(), nn.ravel(), lat0, lon0)
    return np.stack([lat, lon], axis=-1)


def _loss_db(cand_latlon, rx_latlon, exponent: float) -> np.ndarray:
    """10·n·log10(d) between candidates [..., 2] and receivers, broadcasting."""
    d = haversine_m(cand_latlon[..., 0], cand_latlon[..., 1], rx_latlon[..., 0], rx_latlon[..., 1])
    return 10.0 * exponent * np.log10(np.maximum(d, MIN_DISTANCE_M))


def ml_grid_search(power_dbm, rx_position, online, *, exponent: float, noise_floor_dbm: float,
                   sigma_db: float = 6.0, grid_step_m: float = 1000.0, margin_m: float = 20_000.0,
                   refine: bool = True,
                   detection_margin_db: float = DETECTION_MARGIN_DB) -> np.ndarray:
    """[N, 2] lat/lon maximum-likelihood transmitter positions under the log-distance model.

    One grid covers every online receiver ± `margin_m`; each session takes the argmin of
    `_grid_cost`, then (with `refine`) a pattern search of 9 × 9 local grids around it,
    halving from ±2 coarse cells to ±⅛ cell (`_REFINE_STAGES`). Sessions where nobody
    heard get the plain centroid of the online receivers (NaN with no online receiver).
    Work is chunked so one candidate × session × receiver array stays near 16 MB.
    """
    power = np.asarray(power_dbm, dtype=np.float64)
    online = np.asarray(online, dtype=bool)
    rx = _positions(rx_position, power.shape[0])[..., :2]
    heard = heard_mask(power, online, noise_floor_dbm, detection_margin_db)
    signal = np.where(heard, signal_power_dbm(power, noise_floor_dbm), 0.0)
    censored = online & ~heard
    # Threshold on signal power equivalent to "total > floor + margin".
    threshold_dbm = noise_floor_dbm + 10.0 * np.log10(10.0 ** (detection_margin_db / 10.0) - 1.0)
    out = weighted_centroid(power, rx, online, noise_floor_dbm=noise_floor_dbm,
                            detection_margin_db=detection_margin_db)
    todo = np.flatnonzero(heard.any(axis=1))
    if todo.size == 0:
        return out
    grid, table, rx_index = _loss_table(rx, online, exponent, grid_step_m, margin_m)
    args = (threshold_dbm, sigma_db)
    chunk = max(1, _CHUNK_BYTES // (8 * grid.shape[0] * power.shape[1]))
    for start in range(0, todo.size, chunk):
        s = todo[start : start + chunk]
        cost = _grid_cost(table[:, rx_index[s]], signal[s], heard[s], censored[s], *args)
        best = grid[np.argmin(cost, axis=0)]
        for half_cells, points in _REFINE_STAGES if refine else ():
            best = _refine(best, half_cells * grid_step_m, points, rx[s], exponent,
                           signal[s], heard[s], censored[s], args)
        out[s] = best
    return out


def _loss_table(rx_latlon, online, exponent, grid_step_m, margin_m):
    """Coarse grid [G, 2], its path loss to each distinct receiver position [G, U], and
    each session's receivers as indices into U [N, R] (offline ones point anywhere)."""
    grid = _candidate_grid(rx_latlon[online], grid_step_m, margin_m)
    uniq, inverse = np.unique(rx_latlon[online], axis=0, return_inverse=True)
    rx_index = np.zeros(online.shape, dtype=np.int64)
    rx_index[online] = inverse.ravel()
    return grid, _loss_db(grid[:, None, :], uniq[None, :, :], exponent), rx_index


def _refine(best, half_width_m, points, rx_latlon, exponent, signal, heard, censored, args):
    """Argmin over a `points` × `points` grid of ±`half_width_m` around each session's best."""
    offsets = np.linspace(-half_width_m, half_width_m, points)
    de, dn = (v.ravel() for v in np.meshgrid(offsets, offsets, indexing="xy"))
    lat, lon = from_local_en(de[:, None], dn[:, None], best[None, :, 0], best[None, :, 1])
    cand = np.stack([lat, lon], axis=-1)  # [K, n, 2]
    loss = _loss_db(cand[:, :, None, :], rx_latlon[None], exponent)  # [K, n, R]
    cost = _grid_cost(loss, signal, heard, censored, *args)
    pick = np.argmin(cost, axis=0)
    return cand[pick, np.arange(cand.shape[1])]


# ---------------------------------------------------------------------------- kNN


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
    chunk = max(1, _CHUNK_BYTES // (8 * train_x.shape[0]))
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
