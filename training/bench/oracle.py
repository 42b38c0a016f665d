"""The honest yardsticks on synthetic data: the Bayesian oracle and the Cramér-Rao bound.

The oracle is the exact posterior over the transmitter's position under the generator's own
model (`training.datasets.synth`'s docstring), evaluated on a grid of cells that tiles the transmitter
area (uniform in lat/lon, so every cell has the same prior mass). EIRP is unknown: it is
marginalised over its prior with equal-weight quantile nodes (`eirp_nodes_dbm`: the midpoint rule for
one uniform class, the mixture's quantiles for handhelds and mobiles). The channel
(exponent, σ, calibration, noise) is known to the oracle, as it is part of the true model. No
estimator using the same measurements can do better on average, in median error or in NLL.

Per online receiver, with μ = EIRP − PL(d) + calibration (+ the static field when known, + the antenna
gains of directional receivers; PL dual-slope where the scenario's is) and
N = the receiver's noise power (floor + calibration), the captured total power is
P = 10·log10(10^(s/10) + 10^(N/10)), s ~ N(μ, σ²):

- heard, P > N + censor_margin_db: the exact density of P by change of variables,
  s = 10·log10(10^(P/10) − 10^(N/10)), |ds/dP| = 10^(P/10) / (10^(P/10) − 10^(N/10));
- otherwise censored: P(s ≤ s_thr) = Φ((s_thr − μ)/σ), s_thr the signal at which P = N + margin.

The one approximation: a capture's power is an estimate from S samples, whose noise part
fluctuates by ≈ 4.3/√S dB (0.14 dB at S = 1024). Near the floor that error is amplified by
|ds/dP|, so it is ignored above the censoring margin (at 1 dB the amplification is 4.9: about
0.7 dB of extra spread against 6 dB of shadowing) and absorbed by censoring below it.
Offline receivers contribute nothing.

Cost: the heard part is a quadratic in EIRP whose coefficients come from [sessions, R] ×
[R, cells] products, and the censored part is a per-receiver [cells, EIRP nodes] table
computed once (its threshold does not depend on the data), so each chunk of sessions costs a
few passes over a [chunk, cells, EIRP nodes] array, kept near `_CHUNK_BYTES`.

Size: the oracle's posterior and the CRB share the channel model (`ChannelModel`, every effect a
scenario can switch on) and its geometry; apart they would each restate it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from training.bench.grid_posterior import OracleResult, PositionGrid, posterior_moments
from training.datasets.channel import distances_m, log_distance_path_loss_db, noise_power_dbm
from training.datasets.manifest import Receiver
from training.datasets.synth import (
    SynthConfig,
    antenna_patterns,
    receiver_calibration_db,
    receivers_for,
    static_field,
    total_shadowing_sigma_db,
)
from training.geodesy import to_local_en
from training.metrics import point_metrics

LN10 = math.log(10.0)
LOG_2PI = math.log(2.0 * math.pi)
DEFAULT_CENSOR_MARGIN_DB = 1.0
_CHUNK_BYTES = 32 * 2**20  # one [sessions, EIRP nodes, cells] float64 array per chunk


@dataclass(frozen=True, eq=False)
class ChannelModel:
    """The generator's true channel, as the oracle knows it (arrays are per receiver)."""

    frequency_hz: float
    path_loss_exponent: float
    shadowing_sigma_db: float  # iid per session and receiver
    eirp_dbm_min: float  # EIRP ~ U(min, max); equal bounds mean a known EIRP
    eirp_dbm_max: float
    noise_dbm: float  # noise power over the capture bandwidth, before calibration
    calibration_db: np.ndarray  # [R] gain error: scales signal and noise alike
    rx_position: np.ndarray  # [R, 3] latitude°, longitude°, altitude m
    tx_altitude_m: float
    reference_m: float = 1.0  # free-space loss up to here, then 10·n dB per decade
    static_db: Callable | None = None  # known fixed shadowing: (lat, lon) [...] -> [..., R] dB
    antenna_db: Callable | None = None  # known antenna gains towards (lat, lon) [...] -> [..., R] dB
    breakpoint_m: float = 0.0  # > 0: far_exponent beyond it (dual slope)
    far_exponent: float = 0.0
    mobile_share: float = 0.0  # > 0: the EIRP prior mixes U(min, max) with this share of U(mobile_eirp_dbm)
    mobile_eirp_dbm: tuple[float, float] = (44.0, 47.0)

    def __post_init__(self) -> None:
        rx = np.asarray(self.rx_position, dtype=np.float64)
        calibration = np.asarray(self.calibration_db, dtype=np.float64)
        if rx.ndim != 2 or rx.shape[1] != 3 or calibration.shape != (rx.shape[0],):
            raise ValueError(f"need rx_position [R, 3] and calibration_db [R]; got {rx.shape}, {calibration.shape}")
        if not (self.shadowing_sigma_db > 0 and self.eirp_dbm_min <= self.eirp_dbm_max):
            raise ValueError("need shadowing_sigma_db > 0 and eirp_dbm_min <= eirp_dbm_max")
        object.__setattr__(self, "rx_position", rx)
        object.__setattr__(self, "calibration_db", calibration)

    @classmethod
    def from_synth(cls, cfg: SynthConfig, *, knows_static_field: bool = False) -> ChannelModel:
        """The model `cfg` generates from. By default a static shadowing field is treated as
        iid shadowing of the total σ (`synth.total_shadowing_sigma_db`), which is exact per
        session for an oracle that has not learnt the field; `knows_static_field` gives the
        ceiling instead: the field is a known mean and only the iid σ remains."""
        receivers = receivers_for(cfg)
        known = knows_static_field and cfg.static_shadowing_sigma_db > 0
        return cls(
            frequency_hz=cfg.center_frequency_hz,
            path_loss_exponent=cfg.path_loss_exponent,
            shadowing_sigma_db=cfg.shadowing_sigma_db if known else total_shadowing_sigma_db(cfg),
            eirp_dbm_min=cfg.eirp_dbm_min,
            eirp_dbm_max=cfg.eirp_dbm_max,
            noise_dbm=float(noise_power_dbm(cfg.noise_floor_dbm_per_12k5, cfg.sample_rate_hz)),
            calibration_db=receiver_calibration_db(cfg),
            rx_position=np.array([[r.latitude, r.longitude, r.altitude_m] for r in receivers]),
            tx_altitude_m=cfg.tx_altitude_m,
            static_db=static_field(cfg, receivers) if known else None,
            antenna_db=antenna_patterns(cfg, receivers) if cfg.antenna_front_to_back_db > 0 else None,
            breakpoint_m=cfg.path_loss_breakpoint_m, far_exponent=cfg.path_loss_far_exponent,
            mobile_share=cfg.mobile_share, mobile_eirp_dbm=(cfg.mobile_eirp_dbm_min, cfg.mobile_eirp_dbm_max),
        )

    @property
    def receiver_noise_dbm(self) -> np.ndarray:
        """[R] noise power in each capture: the floor scaled by the receiver's gain error."""
        return self.noise_dbm + self.calibration_db

    def mean_offset_db(self, latitude, longitude) -> np.ndarray:
        """[..., R] mean received signal minus EIRP for transmitters at (lat, lon) [...]."""
        receivers = [Receiver(id=str(r), latitude=lat, longitude=lon, altitude_m=alt)
                     for r, (lat, lon, alt) in enumerate(self.rx_position)]
        lat, lon = np.asarray(latitude, dtype=np.float64), np.asarray(longitude, dtype=np.float64)
        distance_m = distances_m(lat[..., None], lon[..., None], self.tx_altitude_m, receivers)
        loss_db = log_distance_path_loss_db(distance_m, self.frequency_hz, self.path_loss_exponent,
                                            self.reference_m, self.breakpoint_m, self.far_exponent)
        offset = self.calibration_db - loss_db
        for known in (self.static_db, self.antenna_db):
            offset = offset if known is None else offset + known(lat, lon)
        return offset


def eirp_nodes_dbm(model: ChannelModel, steps: int) -> np.ndarray:
    """[K] nodes of equal weight 1/K: the EIRP prior's quantiles at (k + 0.5)/K. For a uniform prior the
    midpoint rule (the centres of `steps` equal bins of [min, max]), a single node when the EIRP is known
    (min == max); with mobiles (`mobile_share`) the two classes' mixture, inverted numerically."""
    if not model.mobile_share:
        if model.eirp_dbm_min == model.eirp_dbm_max:
            return np.array([model.eirp_dbm_min])
        bin_db = (model.eirp_dbm_max - model.eirp_dbm_min) / steps
        return model.eirp_dbm_min + bin_db * (np.arange(steps) + 0.5)
    classes = ((model.eirp_dbm_min, model.eirp_dbm_max, 1.0 - model.mobile_share), (*model.mobile_eirp_dbm, model.mobile_share))
    eirp = np.linspace(min(c[0] for c in classes), max(c[1] for c in classes), 20_001)
    cdf = sum(share * np.clip((eirp - low) / max(high - low, 1e-9), 0.0, 1.0) for low, high, share in classes)
    return np.interp((np.arange(steps) + 0.5) / steps, cdf, eirp)


def oracle_posterior(power_dbm, online, model: ChannelModel, *, area: tuple[float, float, float, float],
                     grid_step_m: float = 1000.0, eirp_steps: int = 29,
                     censor_margin_db: float = DEFAULT_CENSOR_MARGIN_DB, chunk_sessions: int | None = None,
                     posterior_dtype=np.float32) -> OracleResult:
    """The exact grid posterior of each session [N, R] under `model`, uniform prior over `area`
    = (lat_min, lat_max, lon_min, lon_max), the generator's transmitter area
    (`synth.transmitter_area(receivers, cfg.area_margin_m)`).

    `log_prob` is stored as `posterior_dtype` (float32 keeps 500 sessions on a 150 km area at
    1 km near 50 MB); moments and evidence are computed in float64 before that.

    Raises:
        ValueError: shapes disagree with the model's receivers, or the area is empty.
    """
    power = np.asarray(power_dbm, dtype=np.float64)
    online = np.asarray(online, dtype=bool)
    if power.ndim != 2 or power.shape != online.shape or power.shape[1] != model.rx_position.shape[0]:
        raise ValueError(f"power {power.shape} and online {online.shape} must be [N, {model.rx_position.shape[0]}]")
    grid = PositionGrid.over_area(area, grid_step_m)
    eirp = eirp_nodes_dbm(model, eirp_steps)
    offset = model.mean_offset_db(*grid.points().T)  # [G, R]
    noise = model.receiver_noise_dbm
    heard = online & (np.nan_to_num(power, nan=-np.inf) > noise + censor_margin_db)
    censored = online & ~heard
    with np.errstate(invalid="ignore", divide="ignore"):
        signal = np.where(heard, 10.0 * np.log10(10.0 ** (power / 10.0) - 10.0 ** (noise / 10.0)), 0.0)
    table = _censored_log_lik(offset, eirp, noise, censor_margin_db, model.shadowing_sigma_db)
    sessions, cells = power.shape[0], offset.shape[0]
    chunk = chunk_sessions or max(1, _CHUNK_BYTES // (8 * cells * eirp.size))
    log_prob = np.empty((sessions, cells), dtype=posterior_dtype)
    log_evidence = np.empty(sessions)
    mean = np.empty((sessions, 2))
    cov = np.empty((sessions, 2, 2))
    for start in range(0, sessions, chunk):
        part = slice(start, start + chunk)
        log_lik = _marginal_log_lik(signal[part], heard[part], censored[part], offset, eirp, table,
                                    model.shadowing_sigma_db)
        log_norm = _logsumexp(log_lik.copy(), axis=1)
        chunk_log_prob = log_lik - log_norm[:, None]
        log_prob[part] = chunk_log_prob
        mean[part], cov[part] = posterior_moments(np.exp(chunk_log_prob).reshape(-1, *grid.shape), grid)
        log_evidence[part] = log_norm - math.log(cells)
    log_evidence += _heard_log_constant(power, signal, heard, model.shadowing_sigma_db)
    return OracleResult(grid, log_prob.reshape(sessions, *grid.shape), mean, cov, log_evidence)


def _censored_log_lik(offset, eirp, noise, margin_db: float, sigma_db: float) -> np.ndarray:
    """[R, K·G] log Φ((s_thr − μ)/σ) for every receiver, EIRP node and cell."""
    threshold = noise + 10.0 * np.log10(10.0 ** (margin_db / 10.0) - 1.0)  # [R]: P = N + margin
    z = (threshold[:, None, None] - eirp[None, :, None] - offset.T[:, None, :]) / sigma_db
    return log_ndtr(z).reshape(offset.shape[1], -1)


def _marginal_log_lik(signal, heard, censored, offset, eirp, table, sigma_db: float) -> np.ndarray:
    """[n, G] log ∫ p(powers | cell, EIRP) dU(EIRP), up to the data-only constant.

    Σ_heard (s − offset − E)² = A2 − 2·E·A1 + E²·H with A1, A2 from matrix products; the
    EIRP is centred on the prior's mid-point first to keep the cancellation small. EIRP nodes
    run along axis 1, so the reductions over them are element-wise over long rows of cells.
    """
    centre = 0.5 * (eirp[0] + eirp[-1])
    h = heard.astype(np.float64)
    s = np.where(heard, signal - centre, 0.0)
    a1 = s.sum(axis=1)[:, None] - h @ offset.T  # [n, G]
    a2 = (s * s).sum(axis=1)[:, None] - 2.0 * (s @ offset.T) + h @ (offset.T**2)
    e = eirp - centre  # [K]
    log_lik = (censored.astype(np.float64) @ table).reshape(signal.shape[0], e.size, offset.shape[0])
    scale = -0.5 / sigma_db**2
    for k, e_k in enumerate(e):  # in place: no [n, K, G] temporaries
        log_lik[:, k] += scale * (a2 - 2.0 * e_k * a1 + (e_k * e_k) * h.sum(axis=1)[:, None])
    return _logsumexp(log_lik, axis=1) - math.log(e.size)


def _heard_log_constant(power, signal, heard, sigma_db: float) -> np.ndarray:
    """[N] Σ_heard −log(σ√2π) + log|ds/dP|: turns the Gaussian kernel into a density of P."""
    log_jacobian = np.where(heard, (power - signal) * LN10 / 10.0, 0.0)
    return heard.sum(axis=1) * -(0.5 * LOG_2PI + math.log(sigma_db)) + log_jacobian.sum(axis=1)


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """log Σ exp(x) along `axis`; overwrites x."""
    peak = np.max(x, axis=axis, keepdims=True)
    x -= peak
    np.exp(x, out=x)
    return np.squeeze(peak, axis) + np.log(np.sum(x, axis=axis))


def oracle_metrics(result: OracleResult, true_latlon, *, crb_m: np.ndarray | None = None) -> dict[str, float]:
    """Errors of the posterior mean, mean NLL of the exact posterior (2-D density in metres)
    and, given the per-session Cramér-Rao bounds, their median."""
    out = {**point_metrics(result.mean_latlon, true_latlon), "nll": float(np.mean(result.nll(true_latlon)))}
    if crb_m is not None:
        out["crb_median_m"] = float(np.median(crb_m))
    return out


def crb_m(true_latlon, online, model: ChannelModel) -> np.ndarray:
    """[N] Cramér-Rao bound on the position RMSE (metres) of each session.

    Unknowns (east, north, EIRP), μ_i = EIRP − PL(d_i) + const, dB measurements with iid
    N(0, σ²) shadowing (Patwari et al. 2003): FIM = Σ_i ∇μ_i ∇μ_iᵀ / σ², with
    ∂μ_i/∂x = b·(x_i − x)/d_i², b = 10·n/ln 10 (n the slope at d_i), d_i the 3-D distance, ∂μ_i/∂EIRP = 1.
    EIRP is a nuisance: the position block of FIM⁻¹ is the inverse of the Schur complement
    σ²·(Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ)⁻¹, g_i the horizontal gradients and ḡ their mean.
    Online receivers only, all treated as heard: noise censoring (which loses information)
    and a known static field or antenna pattern are ignored, and a bounded prior can beat this local bound.
    Fewer than three online receivers (or collinear geometry) give +inf.
    """
    true = np.asarray(true_latlon, dtype=np.float64)
    online = np.asarray(online, dtype=bool)
    rx = model.rx_position
    east, north = to_local_en(rx[None, :, 0], rx[None, :, 1], true[:, 0, None], true[:, 1, None])  # x_i − x
    d2 = east**2 + north**2 + (rx[None, :, 2] - model.tx_altitude_m) ** 2
    sloped = online & (d2 > model.reference_m**2)  # inside the reference the loss is flat
    far = (model.breakpoint_m > 0) & (d2 > model.breakpoint_m**2)  # dual slope: the far exponent beyond it
    b = 10.0 * np.where(far, model.far_exponent, model.path_loss_exponent) / LN10
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(sloped[..., None], b[..., None] * np.stack([east, north], axis=-1) / d2[..., None], 0.0)
    count = online.sum(axis=1)
    g_mean = g.sum(axis=1) / np.maximum(count, 1)[:, None]
    centred = np.where(online[..., None], g - g_mean[:, None, :], 0.0)
    c = np.einsum("nri,nrj->nij", centred, centred)
    det = c[:, 0, 0] * c[:, 1, 1] - c[:, 0, 1] ** 2
    trace = c[:, 0, 0] + c[:, 1, 1]
    identifiable = (count >= 3) & (det > 1e-12 * trace**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(identifiable, model.shadowing_sigma_db * np.sqrt(trace / det), np.inf)
