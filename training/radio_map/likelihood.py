"""The grid posterior's likelihood: a log-distance channel's Gaussian on the heard receivers, log Φ
on the censored ones (online, not heard), the EIRP marginalised over J nodes (model.md).

Shapes: B sessions, K known receivers, J EIRP nodes, G cells, F cells per session (`cells`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class GridChannel(NamedTuple):
    """What the grid posterior's likelihood needs: shapes K receivers, J EIRP nodes, G cells."""

    mean_db: torch.Tensor  # [K, G] signal minus EIRP at each cell
    sigma_db: torch.Tensor  # [K]
    eirp_db: torch.Tensor  # [J] EIRP nodes
    eirp_log_weight: torch.Tensor  # [J]
    censored_log_lik: torch.Tensor  # [K, J·G] log Φ((threshold_k − e_j − mean_k)/σ_k), J-major


def grid_log_posterior(channel: GridChannel, signal, heard, censored, log_prior) -> torch.Tensor:
    """[B, G] log posterior of each cell given per-known-receiver signal / heard / censored [B, K]
    and the log prior over the cells ([G] or [B, G])."""
    return torch.log_softmax(grid_log_likelihood(channel, signal, heard, censored) + log_prior, dim=-1)


def grid_log_likelihood(channel: GridChannel, signal, heard, censored, cells: torch.Tensor | None = None) -> torch.Tensor:
    """[B, G] log p(signal, heard, censored | cell), EIRP marginalised, up to terms that depend on
    neither the cell nor the channel but σ: add −Σ_heard log σ_k for the full density. With `cells`
    [B, F] (indices into G), [B, F]: at those cells of each session only."""
    # centred (each receiver's mean level, the EIRP nodes' mid-point) so the expansion below
    # cancels tens of dB, not hundreds: float32 in ONNX Runtime then agrees with PyTorch
    level = channel.mean_db.mean(dim=1)  # [K]
    field = channel.mean_db - level[:, None]  # [K, G]
    e_mid = channel.eirp_db.mean()
    e = channel.eirp_db - e_mid  # [J]
    weight = heard / (channel.sigma_db * channel.sigma_db)  # [B, K]
    signal = torch.where(heard > 0, signal - level - e_mid, torch.zeros_like(signal))
    ws = weight * signal
    # Σ_k w (s − e − M)² = Σ w s² − 2e Σ w s + e² Σ w − 2 (ws·M − e w·M) + w·M²
    constant = ((ws * signal).sum(dim=1)[:, None] - 2.0 * e * ws.sum(dim=1)[:, None]
                + e * e * weight.sum(dim=1)[:, None])  # [B, J]
    censored_log_lik = channel.censored_log_lik.reshape(field.shape[0], e.shape[0], -1)  # [K, J, G]
    if cells is None:
        cross, linear, square = ws @ field, weight @ field, weight @ (field * field)  # [B, G]
        censored_part = (censored @ channel.censored_log_lik).reshape(-1, e.shape[0], field.shape[1])
    else:
        field = field[:, cells].transpose(0, 1)  # [B, K, F]
        cross, linear = (ws[..., None] * field).sum(dim=1), (weight[..., None] * field).sum(dim=1)
        square = (weight[..., None] * field * field).sum(dim=1)
        censored_part = torch.einsum("bk,kjbf->bjf", censored, censored_log_lik[:, :, cells])
    quadratic = constant[:, :, None] - 2.0 * (cross[:, None, :] - e[None, :, None] * linear[:, None, :]) \
        + square[:, None, :]  # [B, J, G or F]
    return torch.logsumexp(-0.5 * quadratic + censored_part + channel.eirp_log_weight[None, :, None], dim=1)
