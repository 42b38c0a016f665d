"""The log-distance channel fitted by censored (Tobit) maximum likelihood on labelled sessions.

Model, for session i and online receiver r, in the signal power s (noise removed):

    s_ir = A_i + c_r − n · 10·log10(d_ir) + e_ir,   e_ir ~ N(0, σ²)

with A_i the session's unknown EIRP (plus the constant part of the loss), c_r the receiver's
fixed calibration offset (Σ c_r = 0: a common offset is indistinguishable from the EIRP), n
the path-loss exponent and σ the shadowing. A receiver that did not hear (`baselines.heard_mask`)
says s_ir < threshold, the same censoring `grid_search._grid_cost` uses; its likelihood is
Φ((threshold − μ_ir)/σ). Fitting heard receivers alone truncates the data (the far receivers
that were heard got lucky shadowing) and biases n low; the censored likelihood does not.

The EIRPs are incidental parameters, one per session, fitted jointly (L-BFGS on the exact
gradient, preconditioned: see `_Tobit`). Their fit absorbs one residual degree of freedom per session, which shrinks the
maximum-likelihood σ; it is scaled back by √(heard / (heard − sessions)), exact for the
uncensored case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_ndtr
from threadpoolctl import threadpool_limits

from training.geodesy import haversine_m
from training.baselines.power import (
    DETECTION_MARGIN_DB,
    MIN_DISTANCE_M,
    heard_mask,
    positions_per_session,
    signal_power_dbm,
    signal_threshold_dbm,
)

log = logging.getLogger(__name__)
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


@dataclass(frozen=True)
class PathLossFit:
    """The fitted channel: what `grid_search.ml_grid_search` needs."""

    exponent: float  # n
    residual_sigma_db: float  # σ, the shadowing around the fit
    calibration_db: np.ndarray  # [R] c_r, mean zero; 0 for receivers never heard
    sessions_used: int  # sessions with at least one heard receiver (the others say nothing)
    measurements_used: int  # heard receiver measurements
    censored_used: int  # online receivers that did not hear, in those sessions
    converged: bool  # the optimiser met its tolerance (not its iteration cap)


def fit_path_loss(power_dbm, rx_position, online, true_latlon, noise_floor_dbm: float, *,
                  detection_margin_db: float = DETECTION_MARGIN_DB, fit_calibration: bool = True) -> PathLossFit:
    """Censored maximum-likelihood n, σ and per-receiver offsets. Pass the TRAINING sessions only.

    `fit_calibration=False` pins every c_r at 0 (receivers known to be calibrated).

    Raises:
        ValueError: fewer than two sessions with a heard receiver, or no spread in distance.
    """
    power = np.asarray(power_dbm, dtype=np.float64)
    heard = heard_mask(power, online, noise_floor_dbm, detection_margin_db)
    keep = heard.any(axis=1)
    heard = heard[keep]
    censored = np.asarray(online, dtype=bool)[keep] & ~heard
    rx = positions_per_session(rx_position, power.shape[0])[keep]
    true = np.asarray(true_latlon, dtype=np.float64)[keep]
    dist = haversine_m(true[:, None, 0], true[:, None, 1], rx[..., 0], rx[..., 1])
    loss_unit = 10.0 * np.log10(np.maximum(dist, MIN_DISTANCE_M))  # the loss per unit of n
    signal = np.where(heard, signal_power_dbm(power[keep], noise_floor_dbm), 0.0)
    if heard.shape[0] < 2 or np.ptp(loss_unit[heard | censored]) <= 0.0:
        raise ValueError(f"fit_path_loss: only {heard.shape[0]} sessions with a heard receiver")
    problem = _Tobit(signal, loss_unit, heard, censored, signal_threshold_dbm(noise_floor_dbm, detection_margin_db),
                     fit_calibration)
    # One BLAS thread: L-BFGS-B makes thousands of tiny BLAS calls, and waking OpenBLAS's thread pool
    # for each cost ~3 ms a call on 2 busy cores (11.9 s of the tiny job's 13 s of baselines, 5x the
    # single-thread time); the result is the same to the last bit.
    with threadpool_limits(limits=1, user_api="blas"):
        result = minimize(problem.nll, problem.start(), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    exponent, sigma, calibration = problem.unpack(result.x)[1:]
    if not result.success:
        log.warning("channel fit stopped before converging: %s", result.message)
    heard_count, sessions = int(heard.sum()), heard.shape[0]
    pairs = heard_count + int(censored.sum())
    sigma *= np.sqrt(pairs / max(pairs - sessions, 1))
    return PathLossFit(exponent=float(exponent), residual_sigma_db=float(sigma), calibration_db=calibration,
                       sessions_used=sessions, measurements_used=heard_count, censored_used=int(censored.sum()),
                       converged=bool(result.success))


class _Tobit:
    """Negative log-likelihood and gradient for L-BFGS-B, in preconditioned variables y.

    The natural variables are x = (A [N], n, log σ, c [R−1]), with c_0 = −Σ c_rest. The optimiser
    sees each A_i relative to n times its session's mean loss, B_i = A_i − n·ℓ̄_i (which
    decouples the EIRPs from the exponent), and every variable scaled by the square root of its
    Gauss-Newton curvature at the start. It then converges in tens of iterations; in the natural
    variables it stopped at its 2,000-iteration cap on 2,000 sessions, short of the optimum."""

    def __init__(self, signal, loss_unit, heard, censored, threshold_dbm: float, fit_calibration: bool):
        self.signal, self.loss, self.heard, self.censored = signal, loss_unit, heard, censored
        self.threshold, self.fit_calibration = threshold_dbm, fit_calibration
        self.sessions, self.receivers = heard.shape
        pairs = heard | censored
        count = np.maximum(pairs.sum(axis=1), 1)
        self.center = np.where(pairs, loss_unit, 0.0).sum(axis=1) / count  # ℓ̄_i
        sigma = float(np.exp(self._natural_start()[self.sessions + 1]))
        spread = float(np.sum(np.where(pairs, loss_unit - self.center[:, None], 0.0) ** 2))
        per_receiver = np.maximum(pairs.sum(axis=0), 1)[1:] if fit_calibration else np.zeros(0)
        self.scale = np.concatenate([np.sqrt(count) / sigma, [np.sqrt(max(spread, 1e-9)) / sigma],
                                     [np.sqrt(2.0 * pairs.sum())], np.sqrt(per_receiver) / sigma])

    def _natural_start(self) -> np.ndarray:
        """n = 3, σ from the heard spread, each A_i the mean heard residual."""
        count = self.heard.sum(axis=1)
        eirp = np.where(self.heard, self.signal + 3.0 * self.loss, 0.0).sum(axis=1) / count
        spread = np.where(self.heard, self.signal + 3.0 * self.loss - eirp[:, None], 0.0)
        sigma = max(float(np.sqrt(np.sum(spread**2) / max(count.sum() - self.sessions, 1))), 1.0)
        calibration = np.zeros(self.receivers - 1 if self.fit_calibration else 0)
        return np.concatenate([eirp, [3.0, np.log(sigma)], calibration])

    def start(self) -> np.ndarray:
        x = self._natural_start()
        x[: self.sessions] -= x[self.sessions] * self.center
        return x * self.scale

    def unpack(self, y):
        """(A [N], n, σ, c [R]) from the optimiser's variables."""
        x = y / self.scale
        exponent, sigma = float(x[self.sessions]), float(np.exp(x[self.sessions + 1]))
        eirp = x[: self.sessions] + exponent * self.center
        rest = x[self.sessions + 2 :] if self.fit_calibration else np.zeros(self.receivers - 1)
        return eirp, exponent, sigma, np.concatenate([[-rest.sum()], rest])

    def nll(self, y) -> tuple[float, np.ndarray]:
        eirp, exponent, sigma, calibration = self.unpack(y)
        mean = eirp[:, None] + calibration[None, :] - exponent * self.loss
        resid = np.where(self.heard, (self.signal - mean) / sigma, 0.0)
        z = np.where(self.censored, (self.threshold - mean) / sigma, 0.0)
        log_cdf = log_ndtr(z)
        mills = np.where(self.censored, np.exp(-0.5 * z * z - _LOG_SQRT_2PI - log_cdf), 0.0)  # φ(z)/Φ(z)
        value = (np.sum(np.where(self.heard, 0.5 * resid**2 + np.log(sigma), 0.0))
                 - np.sum(np.where(self.censored, log_cdf, 0.0)))
        d_mean = (mills - resid) / sigma  # ∂NLL/∂μ per pair (zero where offline)
        d_eirp = d_mean.sum(axis=1)
        d_log_sigma = np.sum(np.where(self.heard, 1.0 - resid**2, 0.0)) + np.sum(mills * z)
        d_calibration = d_mean.sum(axis=0)
        # A_i = B_i + n·ℓ̄_i: the exponent's derivative holds its path through every A_i
        d_exponent = -np.sum(d_mean * self.loss) + np.sum(d_eirp * self.center)
        grad = [d_eirp, [d_exponent, d_log_sigma]]
        if self.fit_calibration:
            grad.append(d_calibration[1:] - d_calibration[0])
        return float(value), np.concatenate(grad) / self.scale
