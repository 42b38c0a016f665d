"""The oracle's posterior on a grid of equal lat/lon cells: density at the truth, credible level, moments.

`PositionGrid` tiles the transmitter area; `OracleResult` holds each session's cell
log-probabilities and reads the scores off them (`training.bench.oracle` computes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.geodesy import EARTH_RADIUS_M
from training.metrics import localization_errors_m

_LEVEL_CHUNK_SESSIONS = 64


@dataclass(frozen=True, eq=False)
class PositionGrid:
    """Equal lat/lon cells tiling `area` exactly; their size is at most `step_m` (the step
    shrinks so a whole number of cells fits). Cells are indexed [north row, east column]."""

    lat_deg: np.ndarray  # [ny] cell-centre latitudes, ascending
    lon_deg: np.ndarray  # [nx] cell-centre longitudes, ascending
    step_lat_deg: float
    step_lon_deg: float

    @classmethod
    def over_area(cls, area: tuple[float, float, float, float], step_m: float) -> PositionGrid:
        lat_min, lat_max, lon_min, lon_max = area
        height_m = math.radians(lat_max - lat_min) * EARTH_RADIUS_M
        width_m = math.radians(lon_max - lon_min) * EARTH_RADIUS_M * math.cos(math.radians((lat_min + lat_max) / 2))
        if not (height_m > 0 and width_m > 0 and step_m > 0):
            raise ValueError(f"empty area {area} or step {step_m}")
        ny, nx = (max(1, math.ceil(extent / step_m - 1e-6)) for extent in (height_m, width_m))
        step_lat, step_lon = (lat_max - lat_min) / ny, (lon_max - lon_min) / nx
        return cls(lat_min + step_lat * (np.arange(ny) + 0.5), lon_min + step_lon * (np.arange(nx) + 0.5),
                   step_lat, step_lon)

    @property
    def shape(self) -> tuple[int, int]:
        return self.lat_deg.size, self.lon_deg.size

    def points(self) -> np.ndarray:
        """[ny·nx, 2] cell centres, row-major (north rows of east columns)."""
        lat, lon = np.meshgrid(self.lat_deg, self.lon_deg, indexing="ij")
        return np.stack([lat.ravel(), lon.ravel()], axis=-1)

    def cell_area_m2(self, latitude) -> np.ndarray:
        """Area on the sphere of a cell centred at `latitude` (its cos(lat) shrinks east-west)."""
        return (EARTH_RADIUS_M**2 * math.radians(self.step_lat_deg) * math.radians(self.step_lon_deg)
                * np.cos(np.radians(latitude)))


@dataclass(frozen=True, eq=False)
class OracleResult:
    """The posterior of every session: cell log-probabilities, moments and evidence."""

    grid: PositionGrid
    log_prob: np.ndarray  # [N, ny, nx] log posterior probability of each cell (sums to 1 per session)
    mean_latlon: np.ndarray  # [N, 2] posterior mean
    cov_m2: np.ndarray  # [N, 2, 2] posterior covariance, east/north metres at the posterior mean
    log_evidence: np.ndarray  # [N] log p(powers), density in dBm per heard receiver

    def errors_m(self, true_latlon) -> np.ndarray:
        """[N] great-circle metres from the posterior mean to the truth."""
        return localization_errors_m(self.mean_latlon, true_latlon)

    def log_density_m2(self, true_latlon) -> np.ndarray:
        """[N] log posterior density per m² at the truth: cell probability / cell area,
        bilinear between cell centres (clamped to the outermost centres)."""
        true = np.asarray(true_latlon, dtype=np.float64)
        fy = _fractional_index(true[:, 0], self.grid.lat_deg[0], self.grid.step_lat_deg, self.grid.shape[0])
        fx = _fractional_index(true[:, 1], self.grid.lon_deg[0], self.grid.step_lon_deg, self.grid.shape[1])
        y0, x0 = np.floor(fy).astype(int), np.floor(fx).astype(int)
        y1, x1 = np.minimum(y0 + 1, self.grid.shape[0] - 1), np.minimum(x0 + 1, self.grid.shape[1] - 1)
        wy, wx = fy - y0, fx - x0
        rows = np.arange(true.shape[0])

        def log_density(y, x):
            return self.log_prob[rows, y, x] - np.log(self.grid.cell_area_m2(self.grid.lat_deg[y]))

        return ((1 - wy) * ((1 - wx) * log_density(y0, x0) + wx * log_density(y0, x1))
                + wy * ((1 - wx) * log_density(y1, x0) + wx * log_density(y1, x1)))

    def nll(self, true_latlon) -> np.ndarray:
        """[N] −log posterior density (m⁻²) at the truth: comparable to `metrics.localization_metrics`'s nll."""
        return -self.log_density_m2(true_latlon)

    def credible_level(self, true_latlon) -> np.ndarray:
        """[N] posterior mass of the cells more probable than the truth's (nearest) cell: the
        smallest highest-density region holding the truth. Uniform on [0, 1] when exact."""
        true = np.asarray(true_latlon, dtype=np.float64)
        ny, nx = self.grid.shape
        y = np.rint(_fractional_index(true[:, 0], self.grid.lat_deg[0], self.grid.step_lat_deg, ny)).astype(int)
        x = np.rint(_fractional_index(true[:, 1], self.grid.lon_deg[0], self.grid.step_lon_deg, nx)).astype(int)
        log_area = np.log(self.grid.cell_area_m2(self.grid.lat_deg))[None, :, None]
        out = np.empty(true.shape[0])
        for start in range(0, true.shape[0], _LEVEL_CHUNK_SESSIONS):
            part = slice(start, start + _LEVEL_CHUNK_SESSIONS)
            log_density = self.log_prob[part] - log_area
            at_truth = log_density[np.arange(log_density.shape[0]), y[part], x[part]]
            above = log_density > at_truth[:, None, None]
            out[part] = np.sum(np.where(above, np.exp(self.log_prob[part]), 0.0), axis=(1, 2))
        return out


def _fractional_index(value, first: float, step: float, count: int) -> np.ndarray:
    return np.clip((value - first) / step, 0.0, count - 1)


def posterior_moments(prob: np.ndarray, grid: PositionGrid) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean lat/lon [n, 2] and east/north covariance [n, 2, 2] in m² in the local
    frame at the mean (the frame `metrics.mahalanobis_sq` uses). Each cell adds the
    variance of a uniform cell, step²/12, which also keeps one-row grids non-singular."""
    p_lat, p_lon = prob.sum(axis=2), prob.sum(axis=1)
    mean_lat, mean_lon = p_lat @ grid.lat_deg, p_lon @ grid.lon_deg
    d_lat = grid.lat_deg[None, :] - mean_lat[:, None]
    d_lon = grid.lon_deg[None, :] - mean_lon[:, None]
    var_lat = np.sum(p_lat * d_lat**2, axis=1) + grid.step_lat_deg**2 / 12.0
    var_lon = np.sum(p_lon * d_lon**2, axis=1) + grid.step_lon_deg**2 / 12.0
    cov_lat_lon = np.einsum("nij,ni,nj->n", prob, d_lat, d_lon)
    north_per_deg = math.radians(1.0) * EARTH_RADIUS_M
    east_per_deg = north_per_deg * np.cos(np.radians(mean_lat))
    cov = np.empty((prob.shape[0], 2, 2))
    cov[:, 0, 0] = var_lon * east_per_deg**2
    cov[:, 1, 1] = var_lat * north_per_deg**2
    cov[:, 0, 1] = cov[:, 1, 0] = cov_lat_lon * east_per_deg * north_per_deg
    return np.stack([mean_lat, mean_lon], axis=-1), cov

