"""Inputs for the neural network as the contract shapes them: what the model and export tests feed it."""

from __future__ import annotations

import torch

SAMPLES = 256


def make_inputs(batch: int = 4, receivers: int = 7, samples: int = SAMPLES, seed: int = 0):
    """Noise at -110 .. -70 dBm per receiver (amplitude ~1e-5), receivers around 45 N 8 E."""
    g = torch.Generator().manual_seed(seed)
    level_dbm = -110.0 + 40.0 * torch.rand(batch, receivers, 1, 1, generator=g)
    amplitude = torch.sqrt(10 ** (level_dbm / 10) / 2)  # per I and Q, so mean|x|^2 = level
    iq = torch.randn(batch, receivers, samples, 2, generator=g) * amplitude
    latlon = torch.tensor([45.0, 8.0]) + 0.4 * (torch.rand(batch, receivers, 2, generator=g) - 0.5)
    altitude = 1000.0 * torch.rand(batch, receivers, 1, generator=g)
    return iq, torch.cat([latlon, altitude], dim=-1), torch.ones(batch, receivers)
