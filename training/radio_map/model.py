"""RadioMapNet: a learned radio map per receiver and the grid posterior, inside the ONNX graph.

The Bayesian oracle's form (`training.bench.oracle`) with a learned mean field. For every
receiver seen in training (K of them) the graph holds, on a grid of G cells over the area:

    mean_k(x) = c_k − n·10·log10 d_k(x) + m_k(x)     [dB, signal power minus EIRP]

the fitted log-distance channel (`path_loss.fit_path_loss`) plus a residual map m_k learnt
from the training sessions (`radio_map_fit`): the static shadowing that fingerprinting
exploits. A heard receiver says s_k ~ N(EIRP + mean_k(x), σ_k²); an online receiver that did
not hear says s_k < threshold (censored, log Φ precomputed per receiver, EIRP node and cell).
The EIRP is marginalised over J nodes with weights learnt from the training sessions, a
spatial prior over the cells (where transmitters were seen, mixed with uniform) is added, and
the posterior's mean and covariance are the outputs (model.md). On a large area the cells are
evaluated coarse to fine (`refine_stride`, `training.radio_map.refine`): the graph's cost per session
then grows with the blocks, not the cells.

Receiver identity comes from `rx_position`: an input receiver is one of the known receivers
within `MATCH_TOLERANCE_M` of it. Co-located radios (POWDER has a few sites with two) are told
apart by their power: each input takes the co-located radio under whose marginal power
distribution its power is most likely. Receivers unknown to the map are ignored.

Shapes: B sessions, R input receivers, S samples, K known receivers, J EIRP nodes, G cells.
Float32, no data-dependent control flow: batch and receivers stay dynamic in the export.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.geodesy import EARTH_RADIUS_M
from training.radio_map.fingerprint_memory import FingerprintMemory
from training.radio_map.likelihood import GridChannel, grid_log_posterior
from training.radio_map.refine import block_children, refined_posterior

MATCH_TOLERANCE_M = 5.0  # an input receiver this close to a known one is that one (or its site)
POWER_EPS = 1e-18  # -180 dBm floor for the log of an all-zero (offline) capture
NOT_NEAR = -1e9
LN10 = math.log(10.0)  # identity score of a known receiver at another position


class RadioMapNet(nn.Module):
    """Shapes only at construction (so a checkpoint can rebuild it); `radio_map_fit` fills the buffers."""

    preset = "radio-map"  # what `describe` says fitted it; a learnt map's baked copy says "radio-map-learned"

    def __init__(self, receivers: int, grid_shape: tuple[int, int], eirp_nodes: int, samples: int,
                 sample_rate_hz: float = 12500.0, memory_sessions: int = 1, neighbours: int = 1, refine_stride: int = 1):
        super().__init__()
        k, (ny, nx), j = int(receivers), (int(grid_shape[0]), int(grid_shape[1])), int(eirp_nodes)
        self.samples, self.sample_rate_hz, self.grid_shape = samples, sample_rate_hz, (ny, nx)
        g = ny * nx
        self.register_buffer("origin", torch.zeros(2))  # lat°, lon° of the local frame's origin (grid centre)
        self.register_buffer("rx_en", torch.zeros(k, 2))  # known receivers, east/north m in the local frame
        self.register_buffer("grid_en", torch.zeros(g, 2))  # cell centres, east/north m
        self.register_buffer("cell_var_m2", torch.zeros(2))  # step²/12 per axis: a cell's own spread
        self.register_buffer("mean_db", torch.zeros(k, g))  # mean_k(x) above
        self.register_buffer("sigma_db", torch.ones(k))
        self.register_buffer("eirp_db", torch.zeros(j))
        self.register_buffer("eirp_log_weight", torch.full((j,), -math.log(j)))
        self.register_buffer("censored_log_lik", torch.zeros(k, j * g))  # log Φ((thr − e_j − mean_k)/σ_k)
        self.register_buffer("log_prior", torch.full((g,), -math.log(g)))
        self.register_buffer("noise_floor_dbm", torch.tensor(-120.0))  # capture power of "heard nothing"
        # each known receiver's own floor above that one (a gain error scales its noise too); 0 elsewhere
        self.register_buffer("floor_offset_db", torch.zeros(k))
        self.register_buffer("detection_margin_db", torch.tensor(3.0))  # heard: above floor + margin
        # identity among co-located radios: each known radio's marginal power (heard), heard rate, online rate
        self.register_buffer("level_mean_db", torch.zeros(k))
        self.register_buffer("level_std_db", torch.ones(k))
        self.register_buffer("log_heard_rate", torch.zeros(k))
        self.register_buffer("log_unheard_rate", torch.zeros(k))
        self.register_buffer("log_online_rate", torch.zeros(k))
        self.register_buffer("covariance_scale", torch.ones(()))  # post-hoc, as LocalizationNet's
        self.memory = FingerprintMemory(memory_sessions, k, neighbours)  # off (weight 0) unless fitted
        # > 1: the posterior is evaluated on blocks of refine_stride² cells, then cell by cell where it has mass
        self.refine_stride = int(refine_stride)
        if self.refine_stride > 1:
            self.register_buffer("block_children", block_children((ny, nx), self.refine_stride), persistent=False)

    def shape_args(self) -> dict:
        """What the constructor needs besides samples and rate: kept in the checkpoint's hyperparameters."""
        return {"receivers": int(self.rx_en.shape[0]), "grid_shape": list(self.grid_shape),
                "eirp_nodes": int(self.eirp_db.shape[0]), "memory_sessions": int(self.memory.position_en.shape[0]),
                "neighbours": self.memory.neighbours, "refine_stride": self.refine_stride}

    def describe(self) -> dict:
        return {"preset": self.preset, "samples": self.samples, "sample_rate_hz": self.sample_rate_hz,
                "receivers": int(self.rx_en.shape[0]), "grid_shape": list(self.grid_shape),
                "eirp_nodes": int(self.eirp_db.shape[0]), "refine_stride": self.refine_stride, "params": 0,
                "buffers": sum(t.numel() for t in self.buffers())}

    # -- inputs ---------------------------------------------------------------------------

    @staticmethod
    def capture_power_dbm(iq: torch.Tensor, online: torch.Tensor) -> torch.Tensor:
        """[B, R, S, 2] -> [B, R] 10·log10(mean |x|²); offline captures are zeroed first (NaN cannot leak)."""
        iq = torch.where(online[..., None, None], iq, torch.zeros_like(iq))
        return 10.0 * torch.log10((iq * iq).sum(dim=-1).mean(dim=-1) + POWER_EPS)

    def to_local_en(self, latlon: torch.Tensor) -> torch.Tensor:
        """[..., 2] lat/lon degrees -> [..., 2] east/north metres from `origin` (equirectangular)."""
        lat0 = self.origin[0]
        north = torch.deg2rad(latlon[..., 0] - lat0) * EARTH_RADIUS_M
        east = torch.deg2rad(latlon[..., 1] - self.origin[1]) * EARTH_RADIUS_M * torch.cos(torch.deg2rad(lat0))
        return torch.stack([east, north], dim=-1)

    def to_latlon(self, en: torch.Tensor) -> torch.Tensor:
        lat0 = self.origin[0]
        lat = lat0 + torch.rad2deg(en[..., 1] / EARTH_RADIUS_M)
        lon = self.origin[1] + torch.rad2deg(en[..., 0] / (EARTH_RADIUS_M * torch.cos(torch.deg2rad(lat0))))
        return torch.stack([lat, lon], dim=-1)

    def nearby(self, rx_position: torch.Tensor) -> torch.Tensor:
        """[B, R, K] bool: the known receivers at each input's position."""
        offset = self.to_local_en(rx_position[..., :2])[:, :, None, :] - self.rx_en  # [B, R, K, 2]
        return (offset * offset).sum(dim=-1) < MATCH_TOLERANCE_M**2

    def input_floor_dbm(self, near: torch.Tensor) -> torch.Tensor:
        """[B, R] each input's noise floor: its known receiver's (the mean over co-located ones)."""
        offset = (near.float() * self.floor_offset_db).sum(dim=-1) / near.float().sum(dim=-1).clamp(min=1.0)
        return self.noise_floor_dbm + offset

    def identify(self, power: torch.Tensor, heard: torch.Tensor, near: torch.Tensor,
                 online: torch.Tensor) -> torch.Tensor:
        """[B, R, K] 0/1: which known receiver each online input is (none if no known one is near)."""
        z = (power[..., None] - self.level_mean_db) / self.level_std_db
        level = torch.where(heard[..., None], -0.5 * z * z - torch.log(self.level_std_db) + self.log_heard_rate,
                            self.log_unheard_rate.expand_as(z))
        score = torch.where(near, level + self.log_online_rate, torch.full_like(z, NOT_NEAR))
        best = score >= score.max(dim=-1, keepdim=True).values
        return (best & near & online[..., None]).float()

    # -- the posterior --------------------------------------------------------------------

    def per_receiver(self, power, rx_position, online):
        """Per known receiver [B, K] (the mean over the inputs matched to it): signal dB, heard, censored,
        and for the fingerprint memory, dB above the floor and online."""
        near = self.nearby(rx_position)
        floor, margin = self.input_floor_dbm(near), self.detection_margin_db
        heard = online & (power > floor + margin)
        # the noise power removed, in dB relative to the capture: s = P + 10·log10(1 − 10^((N − P)/10))
        below = torch.clamp((floor - power) / 10.0, max=-1e-3)  # heard captures lie above the floor
        signal = torch.where(heard, power + 10.0 * torch.log10(1.0 - torch.exp(below * LN10)), torch.zeros_like(power))
        match = self.identify(power, heard, near, online)
        heard_match = match * heard.float()[..., None]
        heard_count = heard_match.sum(dim=1)  # [B, K]
        signal_k = (heard_match * signal[..., None]).sum(dim=1) / heard_count.clamp(min=1.0)
        heard_k = (heard_count > 0).float()
        online_k = (match.sum(dim=1) > 0).float()
        above = (match * torch.clamp(power - self.noise_floor_dbm, min=0.0)[..., None]).sum(dim=1) / match.sum(dim=1).clamp(min=1.0)
        return signal_k, heard_k, online_k * (1.0 - heard_k), above, online_k

    def grid_channel(self) -> "GridChannel":
        """The likelihood's parts, as the buffers hold them (a learnt map computes its own: `training.radio_map.learned`)."""
        return GridChannel(self.mean_db, self.sigma_db, self.eirp_db, self.eirp_log_weight, self.censored_log_lik)

    def log_posterior(self, signal, heard, censored, log_prior) -> torch.Tensor:
        """`grid_log_posterior` under the buffers' channel."""
        return grid_log_posterior(self.grid_channel(), signal, heard, censored, log_prior)

    def grid_axes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The grid's east [nx] and north [ny] cell centres: `grid_en` is their product, row-major (east fastest)."""
        cells = self.grid_en.reshape(self.grid_shape[0], self.grid_shape[1], 2)
        return cells[0, :, 0], cells[:, 0, 1]

    def cell_posterior(self, signal, heard, censored, log_prior):
        """(log probability [B, C], the places' east/north [C, 2] or [B, C, 2], their own spread [B, 2] m²):
        the grid's cells, or with `refine_stride` > 1 blocks and refined cells (`refine.refined_posterior`)."""
        if self.refine_stride == 1:
            return (self.log_posterior(signal, heard, censored, log_prior), self.grid_en,
                    self.cell_var_m2.expand(signal.shape[0], 2))
        return refined_posterior(self.grid_channel(), signal, heard, censored, log_prior, self.grid_en,
                                 self.cell_var_m2, self.block_children)

    @staticmethod
    def moments(log_prob: torch.Tensor, positions: torch.Tensor, spread: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean [B, 2] and covariance [B, 2, 2], east/north metres, of `cell_posterior`'s places."""
        prob = log_prob.exp()[:, :, None]
        mean = (prob * positions).sum(dim=1)
        centred = positions - mean[:, None, :]  # [B, C, 2]
        cov = (prob * centred).transpose(1, 2) @ centred
        return mean, cov + torch.diag_embed(spread)

    def from_power(self, power, rx_position, online) -> tuple[torch.Tensor, torch.Tensor]:
        """Capture powers [B, R] dBm -> position [B, 2] lat/lon and covariance [B, 2, 2] m²."""
        signal, heard, censored, above, online_k = self.per_receiver(power, rx_position, online)
        votes, where = self.memory.neighbours_of(above, online_k)
        log_prior = self.memory.log_prior(votes, where, *self.grid_axes(), self.log_prior)
        mean, cov = self.moments(*self.cell_posterior(signal, heard, censored, log_prior))
        # the blended position, and the posterior's second moment about it (its covariance + shift·shiftᵀ)
        shift = self.memory.blend * ((votes[..., None] * where).sum(dim=1) - mean)
        cov = cov + shift[:, :, None] * shift[:, None, :]
        return self.to_latlon(mean + shift), cov * self.covariance_scale

    def forward(self, iq: torch.Tensor, rx_position: torch.Tensor,
                rx_online: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ONNX graph (model.md): -> position [B, 2] lat/lon degrees, covariance [B, 2, 2] m² east/north."""
        online = rx_online > 0.5
        return self.from_power(self.capture_power_dbm(iq, online), rx_position, online)
