"""Coarse to fine: the refined posterior is the full grid's, exports, and the grid fits any area."""

from __future__ import annotations

import numpy as np
import torch

from training.geodesy import from_local_en, haversine_m
from training.radio_map.fit import CELLS_PER_AXIS, MAX_CELL_M, make_frame
from training.radio_map.refine import block_children
from tests.support.oracle_map import ORIGIN, channel, net_of, sessions

HALF_M, STEP_M = 10_000.0, 500.0  # a 40 × 40 grid: 20 × 20 blocks of 2 × 2 cells


def _inputs(model, n: int):
    power = torch.tensor(sessions(model, n, half_m=HALF_M), dtype=torch.float32)
    rx = torch.tensor(np.repeat(model.rx_position[None], n, axis=0), dtype=torch.float32)
    return power, rx, torch.ones(n, 3, dtype=torch.bool)


def test_blocks_hold_their_cells_row_major():
    children = block_children((4, 6), 2)
    assert children.shape == (6, 4)
    assert children[0].tolist() == [0, 1, 6, 7] and children[5].tolist() == [16, 17, 22, 23]
    assert sorted(children.flatten().tolist()) == list(range(24))


def test_the_refined_posterior_is_the_full_grids_where_mass_is_and_keeps_a_broad_ones_spread():
    model = channel()
    full, grid = net_of(model, step_m=STEP_M, half_m=HALF_M)
    refined, _ = net_of(model, step_m=STEP_M, half_m=HALF_M, refine_stride=2)
    assert grid.shape == (40, 40)
    power, rx, online = _inputs(model, 200)
    online[:20, 1:] = False  # one receiver only: a ring, a broad posterior spread over many blocks
    with torch.no_grad():
        (position, cov), (got_position, got_cov) = full.from_power(power, rx, online), refined.from_power(power, rx, online)
    moved = haversine_m(*position.double().numpy().T, *got_position.double().numpy().T)
    assert np.median(moved) < 0.05 * STEP_M and moved.max() < 0.2 * STEP_M
    sd, got_sd = torch.linalg.eigvalsh(cov).sqrt(), torch.linalg.eigvalsh(got_cov).sqrt()
    assert sd[:20, 0].median() > 3_000.0  # most are broad: their mass lies beyond the 32 refined blocks
    torch.testing.assert_close(got_sd, sd, rtol=0.03, atol=0.0)


def test_a_refined_map_exports_and_matches_pytorch_in_onnx_runtime(tmp_path):
    from training.export import check_parity, export_onnx

    model = channel()
    net, _ = net_of(model, step_m=STEP_M, half_m=HALF_M, refine_stride=2)
    power, rx, online = _inputs(model, 8)
    iq = np.random.default_rng(3).standard_normal((8, 3, 64, 2))
    iq *= np.sqrt(10 ** (power.numpy() / 10) / (iq**2).sum(-1).mean(-1))[..., None, None]
    inputs = {"iq": iq.astype(np.float32), "rx_position": rx.numpy(), "rx_online": online.float().numpy()}
    export_onnx(net, tmp_path / "model.onnx", samples=64, example_receivers=3)
    report = check_parity(net, tmp_path / "model.onnx", inputs)
    assert report["passed"] and report["max_abs_diff"]["position_m"] < 1.0


def _frame_over(side_m: float):
    corners = np.array([[-side_m / 2, -side_m / 2], [side_m / 2, side_m / 2], [side_m / 2, -side_m / 2]])
    latlon = np.stack(from_local_en(corners[:, 0], corners[:, 1], *ORIGIN), axis=-1)
    return make_frame(latlon, latlon)


def test_the_grid_fits_a_300_km_deployment_at_2_km_and_a_3_km_campus_at_40_m():
    wide, campus = _frame_over(300_000.0), _frame_over(3_000.0)
    assert wide.step_m <= MAX_CELL_M and wide.stride == 2
    assert wide.east.size % 2 == 0 and wide.north.size % 2 == 0
    assert wide.east.size // 2 <= CELLS_PER_AXIS and wide.east[-1] - wide.east[0] >= 300_000.0
    assert campus.step_m <= 40.0 and campus.stride == 1 and campus.east.size <= CELLS_PER_AXIS
