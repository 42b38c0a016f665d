"""Maximum-likelihood grid search: the transmitter position that best explains the received powers.

The log-distance model with the path-loss exponent, shadowing σ and per-receiver calibration
offsets fitted on the training split (`path_loss.fit_path_loss`, or the generator's true ones
on synthetic data), the EIRP profiled out per session, and online receivers that did not hear
as censored measurements. Arrays as in `training.baselines.power`.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from training.geodesy import from_local_en, haversine_m, to_local_en
from training.baselines.power import (
    ARRAY_CHUNK_BYTES,
    DETECTION_MARGIN_DB,
    MIN_DISTANCE_M,
    heard_mask,
    positions_per_session,
    signal_power_dbm,
    signal_threshold_dbm,
    weighted_centroid,
)

# Refinement: a halving pattern search, (half-width in coarse cells, points per axis) per
# stage. The cost valley can be long and shallow (EIRP and distance trade off), so the
# first stage looks ±2 cells away; the last ends at 1/16 of a cell.
_REFINE_STAGES = ((2.0, 9), (1.0, 9), (0.5, 9), (0.25, 9), (0.125, 9))


def _grid_cost(loss_db, signal, heard, censored, threshold_dbm, sigma_db: float):
    """[K, n] negative log-likelihood of n sessions at K candidate positions each.

    `loss_db` [K, n, R] is 10·n·log10(d); `signal` and `threshold_dbm` [n, R] are already
    corrected by each receiver's calibration offset. Heard receivers contribute Gaussian squared
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
        z = (threshold_dbm[censored] - eirp[:, session_of_pair] + loss_db[:, censored]) / sigma_db
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
                   sigma_db: float = 6.0, calibration_db=None, grid_step_m: float = 1000.0,
                   margin_m: float = 20_000.0, refine: bool = True,
                   detection_margin_db: float = DETECTION_MARGIN_DB) -> np.ndarray:
    """[N, 2] lat/lon maximum-likelihood transmitter positions under the log-distance model.

    `calibration_db` [R] (default 0) is each receiver's fixed offset: it is subtracted from
    what the receiver measured, and from its detection threshold. One grid covers every online receiver ± `margin_m`; each session takes the argmin of
    `_grid_cost`, then (with `refine`) a pattern search of 9 × 9 local grids around it,
    halving from ±2 coarse cells to ±⅛ cell (`_REFINE_STAGES`). Sessions where nobody
    heard get the plain centroid of the online receivers (NaN with no online receiver).
    Work is chunked so one candidate × session × receiver array stays near 16 MB.
    """
    power = np.asarray(power_dbm, dtype=np.float64)
    online = np.asarray(online, dtype=bool)
    rx = positions_per_session(rx_position, power.shape[0])[..., :2]
    heard = heard_mask(power, online, noise_floor_dbm, detection_margin_db)
    calibration = np.zeros(power.shape[1]) if calibration_db is None else np.asarray(calibration_db, np.float64)
    signal = np.where(heard, signal_power_dbm(power, noise_floor_dbm) - calibration, 0.0)
    censored = online & ~heard
    threshold_dbm = np.broadcast_to(signal_threshold_dbm(noise_floor_dbm, detection_margin_db) - calibration,
                                    power.shape)
    out = weighted_centroid(power, rx, online, noise_floor_dbm=noise_floor_dbm,
                            detection_margin_db=detection_margin_db)
    todo = np.flatnonzero(heard.any(axis=1))
    if todo.size == 0:
        return out
    grid, table, rx_index = _loss_table(rx, online, exponent, grid_step_m, margin_m)
    chunk = max(1, ARRAY_CHUNK_BYTES // (8 * grid.shape[0] * power.shape[1]))
    for start in range(0, todo.size, chunk):
        s = todo[start : start + chunk]
        args = (threshold_dbm[s], sigma_db)
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

