"""LocalizationNet: raw IQ of several receivers in, transmitter position and covariance out.

Everything the inference service needs lives inside `forward`, which is the ONNX graph of
`model.md`: spectrogram features, the local metric frame, the set encoder and the Gaussian head.

Physics the design follows (contracts/README.md): the information is received power per
receiver, so the spectrogram is kept in absolute dB with a fixed affine scaling, and the
capture's total power in dBm is handed to the set encoder as an explicit scalar. Nothing is
normalised per sample. Offline receivers are removed with `torch.where` before any arithmetic
(so even NaN/Inf in their IQ cannot leak) and masked again in attention and pooling.

Shapes: B sessions, R receivers, S samples, T frames, F = nfft frequency bins.
The graph is float32 throughout, with no complex tensors and no data-dependent control flow,
so the dynamo exporter keeps batch and receivers dynamic.

Size: one network and the layers only it uses (the ConvNeXt encoder, the masked attention,
the Gaussian head): together they are one ONNX graph, read in one place.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.geodesy import EARTH_RADIUS_M

LOCAL_SCALE_M = 50_000.0  # default unit of the local frame; `frame_scale_for` picks one per receiver layout
ALT_SCALE_M = 1_000.0  # receiver altitudes are hundreds of metres
DB_OFFSET, DB_SCALE = 100.0, 20.0  # fixed affine: -100 dBm -> 0, every 20 dB -> 1
POWER_EPS = 1e-18  # -180 dBm floor, far below thermal noise (~-133 dBm in 12.5 kHz)
CHOL_EPS = 1e-3  # minimum std 50 m in scaled units: keeps the covariance positive definite
MASK_BIAS = -1e9  # added to attention scores of offline keys; exp() underflows to exactly 0


@dataclass(frozen=True)
class Preset:
    dims: tuple[int, ...]  # ConvNeXt stage widths
    depths: tuple[int, ...]  # ConvNeXt blocks per stage
    set_width: int  # receiver token width in the set encoder
    set_layers: int  # self-attention layers across receivers
    set_heads: int
    nfft: int  # DFT length; frequency resolution = sample_rate / nfft
    hop: int  # frame hop in samples
    stem_stride: int  # patchify stride of the stem over [time, freq]


PRESETS: dict[str, Preset] = {
    # Runs the real pipeline in tests in seconds.
    "tiny": Preset((8, 16), (1, 1), 16, 1, 2, nfft=32, hop=16, stem_stride=4),
    # CPU default: ~3000 sessions x 7 receivers x 1024 samples in a few minutes on 2 cores.
    "small": Preset((16, 32, 64), (1, 1, 2), 64, 2, 4, nfft=64, hop=32, stem_stride=4),
    # ConvNeXt-Large widths and depths, for a GPU.
    "large": Preset((192, 384, 768, 1536), (3, 3, 27, 3), 512, 2, 8, nfft=64, hop=32, stem_stride=4),
}


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at every [time, freq] position (ConvNeXt's channels-first LN)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6 if dim >= 192 else 0.1))  # layer scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtEncoder(nn.Module):
    """[N, 1, T, F] spectrogram -> [N, dims[-1]] embedding."""

    def __init__(self, dims: tuple[int, ...], depths: tuple[int, ...], stem_stride: int):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(1, dims[0], kernel_size=stem_stride, stride=stem_stride),
            LayerNorm2d(dims[0]),
        ]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i > 0:
                # kernel 3 / padding 1 instead of ConvNeXt's 2x2 so odd, small maps never reach 0
                layers += [LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 3, stride=2, padding=1)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.stages = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(x).mean(dim=(2, 3)))


class MaskedSelfAttention(nn.Module):
    """Pre-norm transformer layer across receivers; no positional encoding (order-free)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, r, w = x.shape
        h = self.norm1(x)
        q, k, v = (proj(h).reshape(b, r, self.heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(w // self.heads) + key_bias[:, None, None, :]
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, r, w)
        x = x + self.out(attended)
        return x + self.mlp(self.norm2(x))


def dft_matrix(nfft: int) -> torch.Tensor:
    """[2N, 2N] real matrix: [frame_re, frame_im] @ M = [X_re, X_im] with a Hann window folded
    in and bins ordered -fs/2 .. fs/2 so neighbouring bins are neighbouring frequencies."""
    n = torch.arange(nfft, dtype=torch.float64)
    window = torch.hann_window(nfft, periodic=True, dtype=torch.float64)
    k = torch.arange(nfft, dtype=torch.float64) - nfft // 2
    angle = 2 * math.pi * n[:, None] * k[None, :] / nfft
    cos, sin = window[:, None] * torch.cos(angle), window[:, None] * torch.sin(angle)
    # X = sum w (a + jb)(cos - j sin) = sum w (a cos + b sin) + j w (b cos - a sin)
    top = torch.cat([cos, -sin], dim=1)
    bottom = torch.cat([sin, cos], dim=1)
    return torch.cat([top, bottom], dim=0).float()


def to_scaled_db(power: torch.Tensor) -> torch.Tensor:
    return (10.0 * torch.log10(power + POWER_EPS) + DB_OFFSET) / DB_SCALE


class LocalizationNet(nn.Module):
    def __init__(self, samples: int, preset: str = "small", sample_rate_hz: float = 12500.0,
                 frame_scale_m: float = LOCAL_SCALE_M):
        super().__init__()
        self.frame_scale_m = float(frame_scale_m)
        # Post-hoc calibration: the covariance is multiplied by this, fitted on the validation split
        # after training (training.calibration.fit_variance_scale). Part of the state, so of the export.
        self.register_buffer("covariance_scale", torch.ones(()))
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        p = PRESETS[preset]
        frames = (samples - p.nfft) // p.hop + 1
        if samples < p.nfft or min(frames, p.nfft) < p.stem_stride:
            raise ValueError(f"samples={samples} too short for preset {preset!r} (nfft={p.nfft})")
        self.samples, self.preset_name, self.preset = samples, preset, p
        self.sample_rate_hz, self.frames = sample_rate_hz, frames
        self.register_buffer("dft", dft_matrix(p.nfft), persistent=False)
        # dividing |X|^2 by sum(w^2) (= 3N/8 for a periodic Hann window) makes the mean over
        # bins equal the frame's windowed mean power, so bins read as dBm
        self.power_norm = 3.0 * p.nfft / 8.0
        self.encoder = ConvNeXtEncoder(p.dims, p.depths, p.stem_stride)
        self.token = nn.Sequential(
            nn.Linear(p.dims[-1] + 4, p.set_width), nn.GELU(), nn.Linear(p.set_width, p.set_width)
        )
        self.set_layers = nn.ModuleList(MaskedSelfAttention(p.set_width, p.set_heads) for _ in range(p.set_layers))
        self.head = nn.Sequential(
            nn.LayerNorm(p.set_width), nn.Linear(p.set_width, p.set_width), nn.GELU(), nn.Linear(p.set_width, 5)
        )
        with torch.no_grad():  # start near "at the receivers' centroid, sigma ~ 20 km"
            self.head[-1].weight.mul_(0.1)
            self.head[-1].bias.copy_(torch.tensor([0.0, 0.0, -0.9, -0.9, 0.0]))

    def describe(self) -> dict:
        return {
            "preset": self.preset_name,
            "samples": self.samples,
            "sample_rate_hz": self.sample_rate_hz,
            "frame_scale_m": self.frame_scale_m,
            "nfft": self.preset.nfft,
            "frames": self.frames,
            **{k: v for k, v in asdict(self.preset).items() if k != "nfft"},
            "params": sum(t.numel() for t in self.parameters()),
        }

    # -- features -------------------------------------------------------------------------

    def spectrogram(self, iq: torch.Tensor) -> torch.Tensor:
        """[B, R, S, 2] -> [B, R, T, F] log power, fixed scaling of dBm per bin."""
        nfft, hop = self.preset.nfft, self.preset.hop
        frames_re = iq[..., 0].unfold(-1, nfft, hop)
        frames_im = iq[..., 1].unfold(-1, nfft, hop)
        spec = torch.cat([frames_re, frames_im], dim=-1) @ self.dft
        power = (spec[..., :nfft] ** 2 + spec[..., nfft:] ** 2) / self.power_norm
        return to_scaled_db(power)

    @staticmethod
    def total_power(iq: torch.Tensor) -> torch.Tensor:
        """[B, R, S, 2] -> [B, R] capture power 10log10(mean|x|^2), fixed scaling."""
        return to_scaled_db((iq**2).sum(dim=-1).mean(dim=-1))

    # -- local frame ----------------------------------------------------------------------

    @staticmethod
    def origin(rx_position: torch.Tensor, online: torch.Tensor) -> torch.Tensor:
        """Masked mean lat/lon of online receivers: [B, 2]."""
        weight = online.float()
        latlon = torch.where(online[..., None], rx_position[..., :2], torch.zeros_like(rx_position[..., :2]))
        return (latlon * weight[..., None]).sum(dim=1) / weight.sum(dim=1, keepdim=True).clamp(min=1.0)

    def target_to_local(self, target_latlon: torch.Tensor, origin_latlon: torch.Tensor) -> torch.Tensor:
        """[..., 2] lat/lon degrees -> [..., 2] (east, north) / frame_scale_m from the origin."""
        lat0 = origin_latlon[..., 0]
        north = torch.deg2rad(target_latlon[..., 0] - lat0) * EARTH_RADIUS_M
        east = torch.deg2rad(target_latlon[..., 1] - origin_latlon[..., 1]) * torch.cos(torch.deg2rad(lat0))
        return torch.stack([east * EARTH_RADIUS_M, north], dim=-1) / self.frame_scale_m

    def local_to_latlon(self, local: torch.Tensor, origin_latlon: torch.Tensor) -> torch.Tensor:
        lat0, lon0 = origin_latlon[:, 0], origin_latlon[:, 1]
        east_m, north_m = local[:, 0] * self.frame_scale_m, local[:, 1] * self.frame_scale_m
        lat = lat0 + torch.rad2deg(north_m / EARTH_RADIUS_M)
        lon = lon0 + torch.rad2deg(east_m / (EARTH_RADIUS_M * torch.cos(torch.deg2rad(lat0))))
        return torch.stack([lat, lon], dim=-1)

    # -- network --------------------------------------------------------------------------

    def forward_local(
        self, iq: torch.Tensor, rx_position: torch.Tensor, rx_online: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> mean [B, 2] and Cholesky factor [B, 2, 2] in scaled east/north units, origin [B, 2]."""
        batch, receivers = iq.shape[0], iq.shape[1]
        online = rx_online > 0.5
        iq = torch.where(online[..., None, None], iq, torch.zeros_like(iq))
        origin = self.origin(rx_position, online)
        position = torch.where(online[..., None], rx_position, torch.zeros_like(rx_position))
        local = self.target_to_local(position[..., :2], origin[:, None, :])

        spec = self.spectrogram(iq).flatten(0, 1)[:, None]  # [B*R, 1, T, F]
        embedding = self.encoder(spec).reshape(batch, receivers, -1)
        altitude = position[..., 2:3] / ALT_SCALE_M
        features = torch.cat([embedding, self.total_power(iq)[..., None], local, altitude], dim=-1)
        tokens = torch.where(online[..., None], self.token(features), torch.zeros_like(embedding[..., :1]))

        key_bias = MASK_BIAS * (1.0 - online.float())
        for layer in self.set_layers:
            tokens = layer(tokens, key_bias)
        weight = online.float()[..., None]
        pooled = (tokens * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)

        out = self.head(pooled)
        zero = torch.zeros_like(out[:, 0])
        chol = torch.stack(
            [
                torch.stack([F.softplus(out[:, 2]) + CHOL_EPS, zero], dim=-1),
                torch.stack([out[:, 4], F.softplus(out[:, 3]) + CHOL_EPS], dim=-1),
            ],
            dim=1,
        )
        return out[:, :2], chol, origin

    def forward(
        self, iq: torch.Tensor, rx_position: torch.Tensor, rx_online: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ONNX graph: -> position [B, 2] lat/lon degrees, covariance [B, 2, 2] m² (east/north)."""
        mean, chol, origin = self.forward_local(iq, rx_position, rx_online)
        chol_m = chol * self.frame_scale_m
        return self.local_to_latlon(mean, origin), chol_m @ chol_m.transpose(1, 2) * self.covariance_scale


def frame_scale_for(rx_latlon) -> float:
    """The local frame's unit for a receiver layout: half its widest span, within [500 m, 50 km].

    Keeps the network's outputs O(1) whether the receivers span 3 km (POWDER) or 150 km (NW Italy).
    """
    from training.geodesy import haversine_m

    lat, lon = rx_latlon[:, 0][:, None], rx_latlon[:, 1][:, None]
    span = float(haversine_m(lat, lon, lat.T, lon.T).max())
    return min(max(span / 2, 500.0), LOCAL_SCALE_M)
