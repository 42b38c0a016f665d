"""Coarse to fine: the grid posterior of a large area, evaluated cell by cell only where it has mass.

A 300 × 300 km deployment at 2 km cells (the finest `fit.MAX_CELL_M` allows there) is about 27,000
cells; the full posterior costs B·J·G per call, and at 150² cells it was already 1.07 ms a session
at batch 64 in ONNX Runtime on this 2-core machine (issue 22's goal: 1 ms). With a `stride` s > 1
the likelihood is first evaluated on blocks of s × s cells (the block's mean field, its censored
term's mean and its prior mass), then cell by cell on the cells of each session's `REFINED_BLOCKS`
most probable blocks. The posterior is normalised over both: the blocks not refined keep their
coarse mass (each stands for s² cells, with a block's own spread), so a broad posterior keeps its
spread, nothing is cut off, and a concentrated one is the fine grid's.

Shapes: B sessions, K receivers, J EIRP nodes, G cells (ny·nx, both multiples of s), C = G / s² blocks,
F = REFINED_BLOCKS · s² refined cells per session.
"""

from __future__ import annotations

import torch

from training.radio_map.likelihood import GridChannel, grid_log_likelihood

REFINED_BLOCKS = 32  # blocks refined per session: the posterior's mass lies in a few (its 95 % region)
NOT_REFINED = -1e30  # a refined block's coarse logit: its cells stand in for it


def block_children(grid_shape: tuple[int, int], stride: int) -> torch.Tensor:
    """[C, s²] the cells of each block, blocks and cells row-major (east fastest) as the grid's."""
    ny, nx = grid_shape
    cells = torch.arange(ny * nx).reshape(ny // stride, stride, nx // stride, stride)
    return cells.permute(0, 2, 1, 3).reshape(-1, stride * stride)


def _blocks(values: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
    """[..., G] -> [..., C, s²] each block's cells."""
    return values[..., children]


def coarse_channel(channel: GridChannel, children: torch.Tensor) -> GridChannel:
    """The channel at block level: each block's mean field and mean censored term."""
    k, j = channel.mean_db.shape[0], channel.eirp_db.shape[0]
    censored = _blocks(channel.censored_log_lik.reshape(k, j, -1), children).mean(dim=-1).reshape(k, -1)
    return channel._replace(mean_db=_blocks(channel.mean_db, children).mean(dim=-1), censored_log_lik=censored)


def refined_posterior(channel: GridChannel, signal, heard, censored, log_prior, grid_en: torch.Tensor,
                      cell_var_m2: torch.Tensor, children: torch.Tensor):
    """(log probability [B, C + F], positions [B, C + F, 2] east/north m, each one's own spread [B, 2] m²)
    of the blocks not refined and the refined cells, given per-receiver signal / heard / censored [B, K]
    and the log prior over the cells ([G] or [B, G])."""
    batch, blocks, per_block = signal.shape[0], children.shape[0], children.shape[1]
    log_prior = log_prior.expand(batch, -1)
    coarse = grid_log_likelihood(coarse_channel(channel, children), signal, heard, censored) \
        + torch.logsumexp(_blocks(log_prior, children), dim=-1)  # [B, C]
    top = torch.topk(coarse, min(REFINED_BLOCKS, blocks), dim=1).indices  # [B, M]
    cells = children[top].flatten(1)  # [B, F]
    fine = grid_log_likelihood(channel, signal, heard, censored, cells=cells) + log_prior.gather(1, cells)
    coarse = coarse.scatter(1, top, torch.full_like(top, 0, dtype=coarse.dtype) + NOT_REFINED)
    log_prob = torch.log_softmax(torch.cat([coarse, fine], dim=1), dim=1)
    block_en = _blocks(grid_en.T, children).mean(dim=-1).T  # [C, 2]
    positions = torch.cat([block_en.expand(batch, -1, -1), grid_en[cells]], dim=1)
    # a block's own spread is s² times a cell's (uniform over s·step on each axis)
    coarse_mass = log_prob[:, :blocks].exp().sum(dim=1, keepdim=True)  # [B, 1]
    return log_prob, positions, cell_var_m2 * (1.0 + (per_block - 1.0) * coarse_mass)
