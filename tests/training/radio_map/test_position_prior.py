"""The transmitter-position prior learns where transmitters are at the scale it can predict across a
held-out block, and not the holes the spatial split leaves in the training transmitters."""

from __future__ import annotations

import numpy as np

from training.radio_map.fit import log_prior_on_cells
from training.radio_map.position_prior import fit_position_prior

STEP_M, BLOCK_M, BUFFER_M = 1250.0, 20000.0, 5000.0
AXIS = np.arange(-5000.0 + STEP_M / 2, 105000.0, STEP_M)  # a 110 km grid around a 100 km area
CELLS = np.stack([axis.ravel() for axis in np.meshgrid(AXIS, AXIS)], axis=-1)
HELD_OUT = ((1, 1), (0, 3), (3, 2))  # blocks (east, north indices) a split holds out


def training_transmitters(east_max_m: float, n: int = 3000, seed: int = 0) -> np.ndarray:
    """[N, 2] transmitters spread evenly over [0, east_max] x [0, 100 km], less the held-out blocks and
    the buffer around them (as a spatial split leaves the training split)."""
    rng = np.random.default_rng(seed)
    tx = np.c_[rng.uniform(0, east_max_m, n), rng.uniform(0, 100000.0, n)]
    keep = np.ones(n, dtype=bool)
    for block in HELD_OUT:
        low = np.array(block) * BLOCK_M
        outside = np.maximum(np.maximum(low - tx, tx - low - BLOCK_M), 0.0)
        keep &= np.hypot(*outside.T) >= BUFFER_M
    return tx[keep]


def prior_over_cells(tx: np.ndarray) -> np.ndarray:
    """[G] the fitted prior's probability of each cell, times the cell count (1: uniform)."""
    prior = fit_position_prior(tx, AXIS, AXIS, BLOCK_M, BUFFER_M)
    return np.exp(log_prior_on_cells(CELLS, tx, prior)) * CELLS.shape[0]


def at(prior: np.ndarray, east_m: float, north_m: float) -> float:
    return float(prior[np.argmin(((CELLS - [east_m, north_m]) ** 2).sum(axis=1))])


def block_centre(block) -> tuple[float, float]:
    return tuple((np.array(block) + 0.5) * BLOCK_M)


def test_evenly_spread_transmitters_leave_no_hole_in_the_prior():
    # measured: flat (weight 0); the former constants (2 steps, weight 0.97) gave 0.03 at every hole
    prior = prior_over_cells(training_transmitters(100000.0))
    for block in HELD_OUT:
        assert at(prior, *block_centre(block)) > 0.8


def test_an_empty_half_of_the_area_is_learnt_while_its_holes_are_not():
    prior = prior_over_cells(training_transmitters(50000.0))  # nobody east of 50 km
    # measured: 1.5 and 1.4 at the occupied half's held-out blocks, 0.62 on average east of 60 km (40 km kernel)
    for block in HELD_OUT[:2]:
        assert at(prior, *block_centre(block)) > 1.2
    empty_half = CELLS[:, 0] > 60000.0
    assert prior[empty_half].mean() < 0.7
