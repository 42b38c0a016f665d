"""Scoring a `RadioMapNet` on labelled sessions through `from_power`: the path of the exported graph.

`radio_map_fit` tunes the σ scale and the fingerprint memory on the validation split with these scores.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from training.metrics import LOG_2PI, localization_errors_m, mahalanobis_sq
from training.radio_map.model import RadioMapNet

MEDIAN, NLL = 0, 1  # `val_scores`' two scores


def val_scores(net: RadioMapNet, val, rx_position) -> tuple[float, float]:
    """(median error m, Gaussian NLL per session once the covariances are scaled by the best scalar) on val.

    The NLL after that scale, 1 + log(mean d²/2) + mean ½·log det Σ + log 2π, is a proper score of the
    output's shape and ranking, blind to the overall confidence the post-hoc calibration sets anyway."""
    position, cov = predict_power(net, val, rx_position)
    d2 = mahalanobis_sq(position, cov, val.latlon)
    nll = 1.0 + math.log(float(np.mean(d2)) / 2.0) + 0.5 * float(np.mean(np.linalg.slogdet(cov)[1])) + LOG_2PI
    return float(np.median(localization_errors_m(position, val.latlon))), nll


def graph_inputs(sessions, part: slice, rx_position) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`from_power`'s inputs for `sessions[part]`: capture powers [B, R] (a capture of nothing at −180 dBm),
    receiver positions [B, R, 3] and the online mask [B, R]."""
    power = torch.as_tensor(np.nan_to_num(sessions.power_dbm[part], neginf=-180.0), dtype=torch.float32)
    rx = torch.as_tensor(np.repeat(np.asarray(rx_position)[None], power.shape[0], axis=0), dtype=torch.float32)
    return power, rx, torch.as_tensor(sessions.online[part])


@torch.no_grad()
def predict_power(net: RadioMapNet, sessions, rx_position) -> tuple[np.ndarray, np.ndarray]:
    """Positions [N, 2] and covariances [N, 2, 2] from capture powers, through the exported graph's path."""
    positions, covariances = [], []
    for start in range(0, sessions.power_dbm.shape[0], 256):
        position, cov = net.from_power(*graph_inputs(sessions, slice(start, start + 256), rx_position))
        positions.append(position.double().numpy())
        covariances.append(cov.double().numpy())
    return np.concatenate(positions), np.concatenate(covariances)
