"""A radio map that learns, by gradient in Lightning, what the closed form's textbook channel leaves out.

The closed-form fit (`training.radio_map.fit`) is the prior and the starting point: its channel,
residual map, EIRP nodes and transmitter prior stay as buffers of the `RadioMapNet` inside. On
top of them `Corrections` learns differentiable parts, each zero at the start (the first epoch
scores the closed form):

    mean_k(x) += g_k(θ_k(x))          antenna gain by the bearing from receiver k (Fourier, HARMONICS)
               + h(log10 d_k(x))      the path loss's shape, shared (piecewise linear, PATH_KNOTS)
    σ_k       ×= exp(s_k);  EIRP node weights += logits

trained end to end on the grid posterior's log-probability of each training session's true cell
(a cross-entropy over the cells), a share of the channel's likelihood there (`CHANNEL_WEIGHT`) and
the corrections' Gaussian prior (`PRIOR_SCALES`), early-stopped on the posterior's loss on val. The censored term is recomputed from the corrected mean in every
step, so nothing leaves the device inside a step.

The posterior is trained under a flat prior over the grid and without the fingerprint memory: both
are made of the training sessions' own positions, so a training loss would only sharpen them (under the
former density prior, fitted to each transmitter's neighbours, val's blocks were its holes;
docs/bench.md has the measurements). It is served without the memory and with the closed form's
position prior (`position_prior`), whose width and weight were fitted to predict transmitters a
held-out block away, not the training sessions themselves: flat where that finds nothing. For the same reason
there is no free per-receiver field over the area: one learnt the training density through the back
door and raised val's loss. `baked` writes the corrected channel into a plain `RadioMapNet`: the
exported graph is the closed form's, with other numbers in it.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn

from training.baselines.power import MIN_DISTANCE_M
from training.fit import MONITOR
from training.radio_map.likelihood import GridChannel, grid_log_likelihood
from training.radio_map.model import RadioMapNet

HARMONICS = 2  # antenna gain: cos/sin of 1..HARMONICS × bearing (a cardioid needs 1, a figure-eight 2)
PATH_KNOTS = 12  # the path loss's shape: knots evenly spaced in log10 distance over the grid's range
# the corrections' Gaussian prior: the scale each part is expected to have (dB, or log σ, or log weight);
# its negative log density, over the training sessions' count, joins the loss (a MAP fit, not a free one)
PRIOR_SCALES = {"antenna_db": 6.0, "path_db": 3.0, "log_sigma_scale": 0.5, "eirp_logit": 2.0}
# Adam moves a parameter about its learning rate per step; the corrections are in dB (and log units), where
# TrainConfig's default 3e-3 (the nets') would take thousands of steps to move a few dB: this family's step
# is the configured rate times this (0.01 at the default, chosen on directional's and nw-italy-2m's val loss)
STEP_SCALE = 10.0 / 3.0
# a hybrid of the two likelihoods (Bishop & Lasserre 2007): the posterior's of the true cell, what is served,
# plus this share of the channel's of the measurements at it, which fits gains with less noise. Chosen on val
# loss at 0, 0.25 and 1: directional (seed 0, 3,000 sessions) was best at 1 (7.002, 6.984, 6.970),
# powder-all (seed 0) at 0 (5.44, 5.96, 6.42); 0.25 is the compromise, the bench reports what it gives
CHANNEL_WEIGHT = 0.25
LEARNED = "radio-map-learned"  # the preset's name (TrainConfig.preset)


class Corrections(nn.Module):
    """The learnt parts; every one is zero (the closed form) at the start."""

    def __init__(self, receivers: int, eirp_nodes: int):
        super().__init__()
        self.antenna_db = nn.Parameter(torch.zeros(receivers, 2, HARMONICS))  # cos, sin coefficients
        self.path_db = nn.Parameter(torch.zeros(PATH_KNOTS))
        self.log_sigma_scale = nn.Parameter(torch.zeros(receivers))
        self.eirp_logit = nn.Parameter(torch.zeros(eirp_nodes))

    def penalty(self) -> torch.Tensor:
        """−log of the corrections' Gaussian prior (`PRIOR_SCALES`), up to a constant."""
        return sum(0.5 * ((parameter / PRIOR_SCALES[name]) ** 2).sum() for name, parameter in self.named_parameters())

    def channel(self, net: RadioMapNet) -> GridChannel:
        """The corrected likelihood's parts, from the closed form's buffers in `net`."""
        k, g = net.mean_db.shape
        offset = net.grid_en[None] - net.rx_en[:, None]  # [K, G, 2] east, north
        bearing = torch.atan2(offset[..., 0], offset[..., 1])
        turns = torch.arange(1, HARMONICS + 1, device=bearing.device, dtype=bearing.dtype)[:, None] * bearing[:, None]
        gain = (self.antenna_db[:, 0, :, None] * torch.cos(turns) + self.antenna_db[:, 1, :, None] * torch.sin(turns)).sum(1)
        log_d = 0.5 * torch.log10((offset * offset).sum(-1).clamp(min=MIN_DISTANCE_M**2))
        mean = net.mean_db + gain + piecewise_linear(log_d, self.path_db)
        sigma = net.sigma_db * torch.exp(self.log_sigma_scale)
        eirp_log_weight = torch.log_softmax(net.eirp_log_weight + self.eirp_logit, dim=0)
        margin = 10.0 * torch.log10(torch.pow(10.0, net.detection_margin_db / 10.0) - 1.0)
        threshold = net.noise_floor_dbm + net.floor_offset_db + margin  # [K] signal power at "heard"
        z = (threshold[:, None, None] - net.eirp_db[None, :, None] - mean[:, None, :]) / sigma[:, None, None]
        return GridChannel(mean, sigma, net.eirp_db, eirp_log_weight, torch.special.log_ndtr(z).reshape(k, -1))


def piecewise_linear(x: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """The function through `knots` evenly spaced over [min x, max x], at x (any shape)."""
    low, high = x.min().detach(), x.max().detach()
    position = (x - low) / (high - low).clamp(min=1e-6) * (knots.shape[0] - 1)
    left = position.floor().clamp(0, knots.shape[0] - 2)
    share = position - left
    left = left.long()
    return knots[left] * (1 - share) + knots[left + 1] * share


class LearnedMapModule(pl.LightningModule):
    """The closed-form `net` (buffers, filled by `start_from`) and its `Corrections`."""

    def __init__(self, samples: int, sample_rate_hz: float, shape: dict, learning_rate: float, train_sessions: int):
        super().__init__()
        self.save_hyperparameters()
        self.net = RadioMapNet(samples=samples, sample_rate_hz=sample_rate_hz, **shape)
        self.corrections = Corrections(self.net.rx_en.shape[0], self.net.eirp_db.shape[0])
        self.register_buffer("served_log_prior", self.net.log_prior.clone())  # the closed form's, for `baked`
        self._val_errors: list[torch.Tensor] = []

    @classmethod
    def start_from(cls, closed_form: RadioMapNet, learning_rate: float, train_sessions: int) -> "LearnedMapModule":
        module = cls(closed_form.samples, closed_form.sample_rate_hz, closed_form.shape_args(), learning_rate,
                     train_sessions)
        module.net.load_state_dict(closed_form.state_dict())
        module.served_log_prior.copy_(closed_form.log_prior)
        module.net.log_prior.fill_(-math.log(module.net.log_prior.numel()))
        module.net.memory.weight.zero_()
        module.net.memory.blend.zero_()
        return module

    def log_likelihood(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, G] log likelihood of each cell, [K] σ) under the corrected channel."""
        channel = self.corrections.channel(self.net)
        return grid_log_likelihood(channel, batch["signal"], batch["heard"], batch["censored"]), channel.sigma_db

    def log_posterior(self, batch) -> torch.Tensor:
        """[B, G] the posterior of each session's cell (under the flat prior `start_from` set)."""
        return self._posterior(self.log_likelihood(batch)[0])

    def _posterior(self, log_lik: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(log_lik + self.net.log_prior, dim=-1)

    def _cell_nll(self, log_posterior: torch.Tensor, batch) -> torch.Tensor:
        return -log_posterior.gather(1, batch["cell"][:, None]).mean()

    def training_step(self, batch, batch_idx):
        log_lik, sigma = self.log_likelihood(batch)
        at_cell = log_lik.gather(1, batch["cell"][:, None])[:, 0] - (batch["heard"] * torch.log(sigma)).sum(dim=1)
        loss = (self._cell_nll(self._posterior(log_lik), batch) - CHANNEL_WEIGHT * at_cell.mean()
                + self.corrections.penalty() / self.hparams.train_sessions)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch["cell"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        log_posterior = self.log_posterior(batch)
        self.log(MONITOR, self._cell_nll(log_posterior, batch), on_epoch=True, batch_size=batch["cell"].shape[0])
        mean = log_posterior.exp() @ self.net.grid_en  # the posterior mean (`moments` without the covariance)
        self._val_errors.append((mean - batch["target_en"]).norm(dim=1))

    def on_validation_epoch_end(self):
        if self._val_errors:
            self.log("val_median_error_m", torch.cat(self._val_errors).median())
            self._val_errors.clear()

    def configure_optimizers(self):
        return torch.optim.Adam(self.corrections.parameters(), lr=self.hparams.learning_rate * STEP_SCALE)

    @torch.no_grad()
    def baked(self) -> RadioMapNet:
        """A plain `RadioMapNet` holding the corrected channel (on the CPU, in eval mode)."""
        channel = self.corrections.channel(self.net)
        # no memory (`start_from`): a one-session stub, so the graph's size does not grow with the training data
        net = RadioMapNet(samples=self.net.samples, sample_rate_hz=self.net.sample_rate_hz,
                          **{**self.net.shape_args(), "memory_sessions": 1})
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items() if not k.startswith("memory.")}
        net.load_state_dict({**state, **{f"memory.{k}": v for k, v in net.memory.state_dict().items()}})
        for name in ("mean_db", "sigma_db", "eirp_log_weight", "censored_log_lik"):
            getattr(net, name).copy_(getattr(channel, name).float().cpu())
        net.log_prior.copy_(self.served_log_prior.cpu())
        net.preset = LEARNED
        return net.eval()

