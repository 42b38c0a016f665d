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

The maximum-likelihood grid search is `training.baselines.grid_search`, the channel it assumes
is fitted by `training.path_loss`, and the kNN fingerprint is `training.baselines.knn`;
this module holds what they share (power, the heard mask and threshold, the chunk size) and
the weighted centroid.
"""

from __future__ import annotations

import numpy as np

DETECTION_MARGIN_DB = 3.0
MIN_DISTANCE_M = 100.0  # keeps log10(d) finite when a candidate sits on a receiver
ARRAY_CHUNK_BYTES = 16 * 2**20  # one [candidates or train, sessions, receivers] float64 array per chunk


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


def signal_threshold_dbm(noise_floor_dbm: float, detection_margin_db: float = DETECTION_MARGIN_DB) -> float:
    """The signal power (noise removed) at which the total is exactly floor + margin: "heard" above it."""
    return noise_floor_dbm + 10.0 * np.log10(10.0 ** (detection_margin_db / 10.0) - 1.0)


def signal_power_dbm(power_dbm, noise_floor_dbm: float) -> np.ndarray:
    """[N, R] signal power with the noise power removed; −inf where not above the floor."""
    excess_mw = 10.0 ** (np.asarray(power_dbm, dtype=np.float64) / 10.0) - 10.0 ** (noise_floor_dbm / 10.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(np.where(excess_mw > 0, excess_mw, 0.0))
    return np.nan_to_num(out, nan=-np.inf)


def positions_per_session(rx_position, n_sessions: int) -> np.ndarray:
    """[N, R, 3] receiver positions: a shared [R, 3] layout broadcast to every session."""
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
    rx = positions_per_session(rx_position, power.shape[0])[..., :2]
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
