"""Fitting `RadioMapNet` from labelled sessions: the channel, the residual maps, the prior, tuned on val.

No gradient descent: every part has a closed form on the training split.

1. The log-distance channel (exponent n, calibration c_k) by censored maximum likelihood
   (`path_loss.fit_path_loss`).
2. Each session's EIRP A_i (mean heard residual) and each receiver's residual r_ik; the map
   m_k(x) is their Gaussian-kernel average around x, shrunk towards 0 where few sessions are
   near (Nadaraya-Watson with a pseudo-count `SHRINK_SESSIONS`). A_i is refitted once with
   the map. The kernel width, or no map at all (iid shadowing has nothing to learn), is the
   one under which the censored model predicts the training sessions best, each from the
   others (`choose_map`). With no map σ is the censored fit's; with one, each receiver's RMS
   residual left by it, times a scale tuned on val.
3. The EIRP nodes are quantiles of the fitted A_i (a learnt prior); the spatial prior is a
   kernel density of the training transmitters mixed with uniform, its width and weight fitted to
   predict transmitters a held-out block away (`position_prior`).

The σ scale and the fingerprint memory are chosen on the validation split (`radio_map_scores`), computed
through `RadioMapNet.from_power`: the graph that is exported. With a learnt map by the median error
(on POWDER that is what beats kNN). With no map by the Gaussian NLL of the output: the median would
favour any sharper posterior, and the memory's votes come from the same powers as the likelihood,
so on iid shadowing they count the evidence twice (median 3 % lower, 1σ coverage 5 points off,
Spearman 0.56 against the oracle's 0.64 on nw-italy-2m).
Arrays: power [N, R] dBm, online [N, R] bool, latlon [N, 2] degrees, columns = receivers.

Size: the closed-form fit's steps in the order they run (channel, residual maps, prior,
memory, the choice on val), sharing the frame and the kernels defined here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
from scipy.special import log_ndtr

from training.geodesy import EARTH_RADIUS_M
from training.baselines.power import MIN_DISTANCE_M, heard_mask, signal_power_dbm, signal_threshold_dbm
from training.baselines.knn import KnnParams, tune_knn
from training.path_loss import fit_path_loss
from training.radio_map.model import RadioMapNet
from training.radio_map.position_prior import PositionPrior, fit_position_prior
from training.radio_map.scores import MEDIAN, NLL, val_scores

CELLS_PER_AXIS = 90  # grid resolution: span / 90 (POWDER: ~40 m; a 150 km area: ~1.7 km) ...
MAX_CELL_M = 2000.0  # ... but no coarser: a larger area gets more cells, evaluated coarse to fine (`refine`)
AREA_MARGIN_SHARE = 0.05  # the grid reaches this share of the span beyond transmitters and receivers
EIRP_NODES = 9
SHRINK_SESSIONS = 2.0  # kernel pseudo-count: a map value needs about this many near sessions
FIT_SESSIONS_MAX = 2000  # training sessions for the channel fit (as the ML baseline's)
KERNEL_STEPS = (2.5, 4.0)  # candidate map kernel widths, in grid steps
MIN_SIGMA_DB = 1.0
SIGMA_SCALES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # candidate scales of a learnt map's in-sample σ, chosen on val
# the fingerprint memory (`fingerprint_memory`): (kernel width in grid steps, share of the prior); (_, 0) = off
MEMORY_CHOICES = ((2.0, 0.0), (4.0, 0.5), (4.0, 0.9), (8.0, 0.5))
BLENDS = (0.0, 0.25, 0.5, 0.75)  # candidate shares of the kNN position in the output
CHUNK = 2048


@dataclass(frozen=True)
class Sessions:
    power_dbm: np.ndarray
    online: np.ndarray
    latlon: np.ndarray


@dataclass
class _Frame:
    """The local equirectangular frame (the graph's own) and the grid."""

    origin: np.ndarray  # lat0, lon0
    step_m: float
    east: np.ndarray  # [nx] cell centres
    north: np.ndarray  # [ny]
    stride: int = 1  # cells per block side (`RadioMapNet.refine_stride`): nx and ny are multiples of it

    def en(self, latlon) -> np.ndarray:
        lat0, lon0 = self.origin
        north = np.radians(latlon[..., 0] - lat0) * EARTH_RADIUS_M
        east = np.radians(latlon[..., 1] - lon0) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
        return np.stack([east, north], axis=-1)

    def cells(self) -> np.ndarray:
        east, north = np.meshgrid(self.east, self.north)
        return np.stack([east.ravel(), north.ravel()], axis=-1)


def make_frame(rx_latlon, tx_latlon) -> _Frame:
    points = np.concatenate([rx_latlon, tx_latlon])
    centre = 0.5 * (points.min(axis=0) + points.max(axis=0))
    frame = _Frame(centre, 1.0, np.zeros(1), np.zeros(1))
    en = frame.en(points)
    low, high = en.min(axis=0), en.max(axis=0)
    span = float((high - low).max())
    step = min(span * (1 + 2 * AREA_MARGIN_SHARE) / CELLS_PER_AXIS, MAX_CELL_M)
    stride = math.ceil(span * (1 + 2 * AREA_MARGIN_SHARE) / step / CELLS_PER_AXIS - 1e-6)  # blocks: at most ~90 a side
    low, high = low - AREA_MARGIN_SHARE * span, high + AREA_MARGIN_SHARE * span
    east, north = (np.arange(low[axis] + step / 2, high[axis], step) for axis in (0, 1))
    east, north = (axis[0] + step * np.arange(-(-axis.size // stride) * stride) for axis in (east, north))
    return _Frame(centre, step, east, north, stride)


def _kernel_average(points, sources, values, weights, bandwidth_m, shrink, leave_one_out: bool = False):
    """Σ k(x, x_i) v_i / (Σ k(x, x_i) w_i + shrink) at each point: [P, K] from sources [N, 2], values [N, K].
    `leave_one_out` (points are the sources): each point's own term (k = 1) left out."""
    out = np.empty((points.shape[0], values.shape[1]))
    for start in range(0, points.shape[0], CHUNK):
        part = slice(start, start + CHUNK)
        d2 = ((points[part, None, :] - sources[None]) ** 2).sum(axis=-1)
        kernel = np.exp(-d2 / (2 * bandwidth_m**2))
        own_values, own_weights = (values[part], weights[part]) if leave_one_out else (0.0, 0.0)
        out[part] = (kernel @ values - own_values) / (kernel @ weights - own_weights + shrink)
    return out


def _log_distance(points, rx_en) -> np.ndarray:
    d = np.linalg.norm(points[:, None, :] - rx_en[None], axis=-1)
    return 10.0 * np.log10(np.maximum(d, MIN_DISTANCE_M))


def _eirp(signal, heard, mean) -> np.ndarray:
    return np.where(heard, signal - mean, 0.0).sum(axis=1) / np.maximum(heard.sum(axis=1), 1)


class _Channel:
    """Everything fitted from the training split that does not depend on the tuned choices."""

    def __init__(self, train: Sessions, rx_latlon, noise_floor_dbm: float, margin_db: float, floor_offset_db):
        self.frame = make_frame(rx_latlon, train.latlon)
        self.noise, self.margin, self.floor_offset = noise_floor_dbm, margin_db, np.asarray(floor_offset_db)
        floors = noise_floor_dbm + self.floor_offset  # [R] each receiver's
        part = slice(0, FIT_SESSIONS_MAX)
        fit = fit_path_loss(train.power_dbm[part], np.c_[rx_latlon, np.zeros(len(rx_latlon))], train.online[part],
                            train.latlon[part], floors, detection_margin_db=margin_db)
        self.exponent, self.calibration, self.sigma = fit.exponent, fit.calibration_db, fit.residual_sigma_db
        self.rx_en = self.frame.en(rx_latlon)
        self.cells = self.frame.cells()
        self.tx_en = self.frame.en(train.latlon)
        self.heard = heard_mask(train.power_dbm, train.online, floors, margin_db)
        self.online = np.asarray(train.online, dtype=bool)
        self.signal = np.where(self.heard, signal_power_dbm(train.power_dbm, floors), 0.0)
        self.threshold = signal_threshold_dbm(floors, margin_db)  # [R]
        self.base_train = self.calibration - self.exponent * _log_distance(self.tx_en, self.rx_en)
        self.base_cells = self.calibration - self.exponent * _log_distance(self.cells, self.rx_en)
        self.levels = _levels(train, self.heard)

    def residual_map(self, bandwidth_m: float | None, leave_one_out: bool = True):
        """Map on the cells [G, K] (zero for None: no map), session EIRPs [N], the heard residuals' mean
        square per receiver [K] and `log_lik` of the training sessions, each session's from the map
        without it (`leave_one_out`: a score of the width, so no map on the cells, None) or with it."""
        weights = self.heard.astype(np.float64)
        at_train = np.zeros_like(self.base_train)
        for _ in range(2 if bandwidth_m else 0):
            eirp = _eirp(self.signal, self.heard, self.base_train + at_train)
            residual = np.where(self.heard, self.signal - eirp[:, None] - self.base_train, 0.0)
            at_train = _kernel_average(self.tx_en, self.tx_en, residual, weights, bandwidth_m, SHRINK_SESSIONS,
                                       leave_one_out=leave_one_out)
        on_cells = None if leave_one_out else \
            (_kernel_average(self.cells, self.tx_en, residual, weights, bandwidth_m, SHRINK_SESSIONS)
             if bandwidth_m else np.zeros((self.cells.shape[0], weights.shape[1])))
        eirp = _eirp(self.signal, self.heard, self.base_train + at_train)
        left = np.where(self.heard, self.signal - eirp[:, None] - self.base_train - at_train, 0.0)
        mean_square = (left**2).sum(axis=0) / np.maximum(weights.sum(axis=0), 1)
        return on_cells, eirp, mean_square, self.log_lik(left, eirp[:, None] + self.base_train + at_train)

    def log_lik(self, heard_residual, mean) -> float:
        """The censored model's log-likelihood of the training sessions (σ the censored fit's) given
        the heard residuals [N, K] and each pair's mean [N, K], up to a constant."""
        censored = self.online & ~self.heard & self.heard.any(axis=1)[:, None]
        z = np.where(censored, (self.threshold - mean) / self.sigma, 0.0)
        return float(-0.5 * np.sum((heard_residual / self.sigma) ** 2) + np.sum(np.where(censored, log_ndtr(z), 0.0)))


def log_prior_on_cells(cells_en, tx_en, prior: PositionPrior) -> np.ndarray:
    """[G] log of the transmitter-position prior over the cells: `prior.weight` of the transmitters'
    kernel density (normalised over the cells), the rest uniform."""
    ones = np.ones((tx_en.shape[0], 1))
    density = _kernel_average(cells_en, tx_en, ones, np.zeros_like(ones), prior.kernel_m, 1.0)[:, 0]
    return np.log(prior.weight * density / max(density.sum(), 1e-300) + (1 - prior.weight) / density.size)


def _levels(train: Sessions, heard) -> dict[str, np.ndarray]:
    """Each receiver's marginal power when heard, heard rate and online rate (identity of co-located radios)."""
    online = train.online.astype(np.float64)
    count = np.maximum(heard.sum(axis=0), 1)
    mean = np.where(heard, train.power_dbm, 0.0).sum(axis=0) / count
    var = np.where(heard, (train.power_dbm - mean) ** 2, 0.0).sum(axis=0) / count
    heard_rate = np.clip(heard.sum(axis=0) / np.maximum(online.sum(axis=0), 1), 1e-3, 1 - 1e-3)
    online_rate = np.clip(online.mean(axis=0), 1e-3, 1.0)
    return {"level_mean_db": mean, "level_std_db": np.sqrt(var) + 1.0, "log_heard_rate": np.log(heard_rate),
            "log_unheard_rate": np.log1p(-heard_rate), "log_online_rate": np.log(online_rate)}


def memory_values(train: Sessions, channel: _Channel, knn: KnnParams) -> dict[str, np.ndarray]:
    """The fingerprint memory's constants: the training sessions as `knn` compares them."""
    online = np.asarray(train.online, dtype=bool)
    power = np.nan_to_num(train.power_dbm, nan=-np.inf)
    above = np.where(online, np.maximum(power, channel.noise) - channel.noise, 0.0)
    return {"fingerprint_db": above, "compared": online, "position_en": channel.tx_en,
            "rms": float(knn.metric == "rms"), "compare_all": float(knn.offline == "not_heard"),
            "weight_exponent": {"uniform": 0.0, "inverse": 1.0, "inverse_square": 2.0}[knn.weights]}


def build_net(channel: _Channel, residual_map, eirp_fit, sigma, log_prior, samples: int,
              sample_rate_hz: float, memory: dict, neighbours: int) -> RadioMapNet:
    frame, k = channel.frame, channel.rx_en.shape[0]
    net = RadioMapNet(k, (frame.north.size, frame.east.size), EIRP_NODES, samples, sample_rate_hz,
                      memory_sessions=memory["position_en"].shape[0], neighbours=neighbours, refine_stride=frame.stride)
    mean = (channel.base_cells + residual_map).T  # [K, G]
    eirp = np.quantile(eirp_fit, (np.arange(EIRP_NODES) + 0.5) / EIRP_NODES)
    censored = log_ndtr((channel.threshold[:, None, None] - eirp[None, :, None] - mean[:, None, :]) / sigma[:, None, None])
    values = {"origin": frame.origin, "rx_en": channel.rx_en, "grid_en": channel.cells, "mean_db": mean,
              "cell_var_m2": np.full(2, frame.step_m**2 / 12), "sigma_db": sigma, "eirp_db": eirp,
              "censored_log_lik": censored.reshape(k, -1), "log_prior": log_prior,
              "noise_floor_dbm": channel.noise, "floor_offset_db": channel.floor_offset,
              "detection_margin_db": channel.margin, **channel.levels}
    with torch.no_grad():
        for module, items in ((net, values), (net.memory, memory)):
            for name, value in items.items():
                getattr(module, name).copy_(torch.as_tensor(np.asarray(value), dtype=torch.float32))
    return net.eval()


def set_memory(net: RadioMapNet, kernel_m: float, weight: float, blend: float = 0.0) -> RadioMapNet:
    with torch.no_grad():
        net.memory.bandwidth_m.fill_(kernel_m)
        net.memory.weight.fill_(weight)
        net.memory.blend.fill_(blend)
    return net


def choose_map(channel: _Channel, kernels_m) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(kernel width m, 0 for none; map [G, K]; EIRPs of the sessions with a heard receiver; σ [K]).

    Of no map and one per width, the one under which the censored model finds the training sessions
    likeliest out of sample (each session's map value from the map without it): heard residuals
    alone would favour a map that learns their truncation (far receivers are heard when lucky).
    No map: the oracle's form, σ the censored fit's (the heard residuals alone are truncated: too
    small). A learnt map: σ_k is the RMS of receiver k's heard residuals left by it, in sample, a
    scale of which `fit_radio_map` tunes on val (on POWDER the censored fit's σ, at any scale, lost
    50-60 m of median error with all receivers)."""
    heard_any = channel.heard.any(axis=1)
    flat_map, flat_eirp, _, flat_log_lik = channel.residual_map(None, leave_one_out=False)  # no map: nothing to leave out
    best = (flat_log_lik, 0.0)
    for kernel_m in kernels_m:
        log_lik = channel.residual_map(kernel_m)[3]
        if log_lik > best[0]:
            best = (log_lik, kernel_m)
    kernel_m = best[1]
    if not kernel_m:
        return 0.0, flat_map, flat_eirp[heard_any], np.full(flat_map.shape[1], channel.sigma)
    residual_map, eirp, mean_square, _ = channel.residual_map(kernel_m, leave_one_out=False)
    return kernel_m, residual_map, eirp[heard_any], np.maximum(np.sqrt(mean_square), MIN_SIGMA_DB)


def fit_radio_map(train: Sessions, val: Sessions, rx_position, noise_floor_dbm: float, margin_db: float,
                  samples: int, sample_rate_hz: float, floor_offset_db=None,
                  holdout_m: tuple[float, float] = (0.0, 0.0)) -> tuple[RadioMapNet, dict]:
    """The tuned `RadioMapNet` and what was chosen (kernel, prior, memory, val median). `floor_offset_db`
    [R]: each receiver's noise floor above `noise_floor_dbm` (none: 0). `holdout_m`: the spatial split's
    block side and buffer, which the position prior is fitted to predict across (`position_prior`;
    0, 0: each transmitter from all the others).

    Raises:
        ValueError: fewer than two training sessions with a heard receiver.
    """
    rx_position = np.asarray(rx_position, dtype=np.float64)
    offsets = np.zeros(rx_position.shape[0]) if floor_offset_db is None else floor_offset_db
    channel = _Channel(train, rx_position[:, :2], noise_floor_dbm, margin_db, offsets)
    knn, _ = tune_knn(train.power_dbm, train.online, train.latlon, val.power_dbm, val.online, val.latlon,
                      noise_floor_dbm=noise_floor_dbm)
    memory = memory_values(train, channel, knn)
    step = channel.frame.step_m
    kernel_m, residual_map, eirp, sigma = choose_map(channel, [k * step for k in KERNEL_STEPS])
    prior = fit_position_prior(channel.tx_en, channel.frame.east, channel.frame.north, *holdout_m)
    log_prior = log_prior_on_cells(channel.cells, channel.tx_en, prior)
    # a learnt map's σ is in sample, its scale chosen by the median; no map: the oracle's form, kept honest
    criterion, scales = (MEDIAN, SIGMA_SCALES) if kernel_m > 0 else (NLL, (1.0,))
    best = None
    for scale in scales:
        candidate_net = build_net(channel, residual_map, eirp, sigma * scale, log_prior, samples, sample_rate_hz,
                                  memory, knn.k)
        scores = val_scores(candidate_net, val, rx_position)
        if best is None or scores[criterion] < best[0][criterion]:
            best = (scores, candidate_net, scale)
    scores, net, sigma_scale = best
    memory_choice = (step, 0.0, 0.0)
    for (memory_steps, weight), blend in product(MEMORY_CHOICES, BLENDS):
        candidate = val_scores(set_memory(net, memory_steps * step, weight, blend), val, rx_position)
        if candidate[criterion] < scores[criterion]:
            scores, memory_choice = candidate, (memory_steps * step, weight, blend)
    set_memory(net, *memory_choice)
    median, nll = scores
    return net, {"kernel_m": kernel_m, "sigma_scale": sigma_scale, "prior_kernel_m": prior.kernel_m,
                 "prior_weight": prior.weight, **dict(zip(("memory_kernel_m", "memory_weight", "knn_blend"), memory_choice)),
                 "memory_neighbours": knn.k, "val_median_error_m": median, "val_nll": nll, "exponent": channel.exponent,
                 "grid_step_m": step, "cells": int(channel.cells.shape[0])}
