"""A radio map that holds exactly the oracle's model: three receivers around one origin, on the oracle's grid."""

from __future__ import annotations

import math

import numpy as np
import torch

from training.bench.oracle import ChannelModel, _censored_log_lik, eirp_nodes_dbm
from training.geodesy import EARTH_RADIUS_M, from_local_en
from training.radio_map.model import RadioMapNet

ORIGIN = (45.0, 8.0)
RX_EN_M = np.array([[-6000.0, -4000.0], [5000.0, -3000.0], [1000.0, 6000.0]])
NOISE_DBM, MARGIN_DB, SIGMA_DB, EIRP_STEPS, STEP_M = -120.0, 1.0, 6.0, 5, 2000.0


def channel(calibration_db=np.zeros(3)) -> ChannelModel:
    """Three receivers; a gain error (`calibration_db`) scales a receiver's signal and noise alike."""
    lat, lon = from_local_en(RX_EN_M[:, 0], RX_EN_M[:, 1], *ORIGIN)
    return ChannelModel(frequency_hz=145.5e6, path_loss_exponent=3.0, shadowing_sigma_db=SIGMA_DB,
                        eirp_dbm_min=30.0, eirp_dbm_max=44.0, noise_dbm=NOISE_DBM, calibration_db=calibration_db,
                        rx_position=np.stack([lat, lon, np.full(3, 2.0)], axis=-1), tx_altitude_m=2.0)


def area(half_m: float = 5000.0) -> tuple[float, float, float, float]:
    half_lat = math.degrees(half_m / EARTH_RADIUS_M)
    half_lon = math.degrees(half_m / (EARTH_RADIUS_M * math.cos(math.radians(ORIGIN[0]))))
    return ORIGIN[0] - half_lat, ORIGIN[0] + half_lat, ORIGIN[1] - half_lon, ORIGIN[1] + half_lon


def net_of(model: ChannelModel, step_m: float = STEP_M, half_m: float = 5000.0,
           refine_stride: int = 1) -> tuple[RadioMapNet, object]:
    """A RadioMapNet holding exactly the oracle's model on the oracle's grid (a residual map of zero)."""
    from training.bench.grid_posterior import PositionGrid

    grid = PositionGrid.over_area(area(half_m), step_m)
    points = grid.points()
    offset = model.mean_offset_db(points[:, 0], points[:, 1])  # [G, K]
    eirp = eirp_nodes_dbm(model, EIRP_STEPS)
    net = RadioMapNet(3, grid.shape, EIRP_STEPS, samples=64, refine_stride=refine_stride)
    with torch.no_grad():
        net.origin.copy_(torch.tensor(ORIGIN))
        net.grid_en.copy_(net.to_local_en(torch.tensor(points, dtype=torch.float32)))
        net.rx_en.copy_(net.to_local_en(torch.tensor(model.rx_position[:, :2], dtype=torch.float32)))
        net.mean_db.copy_(torch.tensor(offset.T))
        net.sigma_db.fill_(SIGMA_DB)
        net.eirp_db.copy_(torch.tensor(eirp))
        net.censored_log_lik.copy_(torch.tensor(_censored_log_lik(offset, eirp, model.receiver_noise_dbm, MARGIN_DB, SIGMA_DB)))
        net.noise_floor_dbm.fill_(NOISE_DBM)
        net.floor_offset_db.copy_(torch.tensor(model.calibration_db))
        net.detection_margin_db.fill_(MARGIN_DB)
        net.cell_var_m2.fill_(step_m**2 / 12.0)
    return net.eval(), grid


def sessions(model: ChannelModel, n: int, seed: int = 0, half_m: float = 5000.0) -> np.ndarray:
    """[n, 3] capture powers: random EIRPs and positions, shadowing, noise; some below the floor."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(*area(half_m)[:2], n)
    lon = rng.uniform(*area(half_m)[2:], n)
    signal = rng.uniform(30, 44, (n, 1)) + model.mean_offset_db(lat, lon) + rng.normal(0, SIGMA_DB, (n, 3))
    noise = model.receiver_noise_dbm
    power = 10 * np.log10(10 ** (signal / 10) + 10 ** (noise / 10))
    power[:, 2] -= 40.0 * (np.arange(n) % 3 == 0)  # push receiver 2 towards the floor in a third of them
    return np.maximum(power, noise)
