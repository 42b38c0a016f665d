"""A fingerprint memory inside the graph: soft kNN over the training sessions, as a prior over cells.

The training sessions' fingerprints (each known receiver's power in dB above the floor, 0 when
not heard or offline, as `knn` compares them) and positions are constants of the graph. For a
session, its `neighbours` nearest fingerprints (RMS or mean |dB| over the receivers compared,
`knn.KnnParams` tuned on the validation split) vote for their positions with kNN's weights;
the votes, spread by a Gaussian kernel, are a density over the grid cells that is mixed into
the radio map's prior: where sessions that sounded like this one were, with the map's
likelihood deciding between those places. `weight` 0 turns it off. The votes' mean position is
also kNN's estimate; `blend` of it is mixed into the output position (two estimators whose
errors are partly independent: on POWDER the blend beat both on the validation split).

Shapes: B sessions, K known receivers, N training sessions, k neighbours, G cells.
"""

from __future__ import annotations

import torch
from torch import nn

FAR_DB = 1e6  # the distance to a training session sharing no compared receiver
EXACT_DB = 1e-3  # inverse weights: distances below this count as this (an exact match dominates)


class FingerprintMemory(nn.Module):
    def __init__(self, sessions: int, receivers: int, neighbours: int):
        super().__init__()
        self.neighbours = int(min(neighbours, sessions))
        self.register_buffer("fingerprint_db", torch.zeros(sessions, receivers))
        self.register_buffer("compared", torch.zeros(sessions, receivers))  # 1: online in that session
        self.register_buffer("position_en", torch.zeros(sessions, 2))  # east/north m in the map's frame
        self.register_buffer("weight", torch.zeros(()))  # share of the prior the memory's density takes
        self.register_buffer("bandwidth_m", torch.ones(()))
        self.register_buffer("rms", torch.ones(()))  # 1: RMS dB distance, 0: mean |dB|
        self.register_buffer("compare_all", torch.zeros(()))  # 1: offline reads as "not heard" and is compared
        self.register_buffer("weight_exponent", torch.full((), 2.0))  # votes ∝ distance^-exponent (0, 1 or 2)
        # share of the kNN position (the votes' mean) in the output position; the map posterior's the rest
        self.register_buffer("blend", torch.zeros(()))

    def distances(self, above_db: torch.Tensor, online: torch.Tensor) -> torch.Tensor:
        """[B, N] fingerprint distance of each session to every training session."""
        mask = torch.maximum(online[:, None, :] * self.compared[None], self.compare_all)  # [B, N, K]
        diff = (above_db[:, None, :] - self.fingerprint_db[None]) * mask
        count = mask.sum(dim=-1)
        mean_sq = (diff * diff).sum(dim=-1) / count.clamp(min=1.0)
        mean_abs = diff.abs().sum(dim=-1) / count.clamp(min=1.0)
        dist = torch.where(self.rms > 0.5, torch.sqrt(mean_sq), mean_abs)
        return torch.where(count > 0, dist, torch.full_like(dist, FAR_DB))

    def neighbours_of(self, above_db: torch.Tensor, online: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest training sessions: their normalised votes [B, k] and positions [B, k, 2] (east/north m)."""
        negative, index = torch.topk(-self.distances(above_db, online), self.neighbours, dim=1)
        dist = (-negative).clamp(min=EXACT_DB)  # [B, k]
        votes = torch.where(self.weight_exponent > 1.5, 1.0 / (dist * dist),
                            torch.where(self.weight_exponent > 0.5, 1.0 / dist, torch.ones_like(dist)))
        votes = votes * (dist < FAR_DB).float()
        votes = votes / votes.sum(dim=1, keepdim=True).clamp(min=1e-30)
        return votes, self.position_en[index]

    def log_prior(self, votes: torch.Tensor, where: torch.Tensor, east: torch.Tensor, north: torch.Tensor,
                  base_log_prior: torch.Tensor) -> torch.Tensor:
        """[B, G] log of (1 − weight)·base + weight·(the neighbours' kernel density over the cells).

        The cells are the product grid of `north` [ny] × `east` [nx] (row-major, east fastest), so the
        Gaussian kernel factorises by axis: B·k·(nx + ny) exponentials and one batched matmul, not B·k·G
        exponentials (a third of the radio map's fit time went there)."""
        scale = -0.5 / (self.bandwidth_m * self.bandwidth_m)
        along_east = torch.exp(scale * (east[None, None, :] - where[..., 0:1]) ** 2)  # [B, k, nx]
        along_north = torch.exp(scale * (north[None, None, :] - where[..., 1:2]) ** 2)  # [B, k, ny]
        density = ((votes[..., None] * along_north).transpose(1, 2) @ along_east).flatten(1)  # [B, ny·nx]
        density = density / density.sum(dim=-1, keepdim=True).clamp(min=1e-30)
        return torch.log((1.0 - self.weight) * base_log_prior.exp() + self.weight * density + 1e-30)
