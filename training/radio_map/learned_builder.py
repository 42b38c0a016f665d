"""The learned radio map as a model family (preset "radio-map-learned"): the closed-form fit, then its
corrections (`training.radio_map.learned`) trained by gradient in Lightning (`training.fit`).

Every rank fits the closed form (deterministic, the same on each) and turns the sessions into the
posterior's inputs once: per known receiver, signal, heard and censored, and the true cell. The
Trainer then owns the fit: devices, precision, checkpoints every epoch, early stopping on val's
loss, `--resume_training`, DDP. Rank zero gets the best checkpoint's corrections written into a
plain `RadioMapNet` (`LearnedMapModule.baked`), which the recipe calibrates and exports like the
closed form's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from foundation.errors import ConfigError
from foundation.train_config import TrainConfig
from training.datasets.verified import VerifiedDataset
from training.family import FitResult, FitRun
from training.fit import batch_loaders, fit as fit_with_lightning
from training.radio_map.learned import LearnedMapModule
from training.radio_map.model import RadioMapNet
from training.radio_map.scores import graph_inputs
from training.radio_map.train import fit_closed_form, split_sessions

FEATURE_CHUNK = 2048  # sessions turned into the posterior's inputs at a time


class PosteriorInputs(Dataset):
    """Sessions as the grid posterior reads them, a whole batch per `__getitems__`."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors["cell"].shape[0]

    def __getitems__(self, ks: list[int]) -> dict[str, torch.Tensor]:
        chosen = torch.as_tensor(ks, dtype=torch.long)
        return {name: values[chosen] for name, values in self.tensors.items()}


@torch.no_grad()
def posterior_inputs(net: RadioMapNet, data: VerifiedDataset, split: str) -> PosteriorInputs:
    """The split's sessions through `net`'s input stage (as the exported graph reads them) and their true cells."""
    sessions = split_sessions(data, split)
    east, north = net.grid_axes()
    parts: dict[str, list[torch.Tensor]] = {"signal": [], "heard": [], "censored": [], "cell": [], "target_en": []}
    for start in range(0, sessions.power_dbm.shape[0], FEATURE_CHUNK):
        part = slice(start, start + FEATURE_CHUNK)
        signal, heard, censored, _, _ = net.per_receiver(*graph_inputs(sessions, part, data.rx_position))
        target = net.to_local_en(torch.as_tensor(sessions.latlon[part], dtype=torch.float32))
        column = (target[:, :1] - east).abs().argmin(dim=1)
        row = (target[:, 1:] - north).abs().argmin(dim=1)
        for name, value in zip(parts, (signal, heard, censored, row * east.shape[0] + column, target)):
            parts[name].append(value)
    return PosteriorInputs({name: torch.cat(values) for name, values in parts.items()})


def fit(data: VerifiedDataset, config: TrainConfig, run: FitRun) -> FitResult:
    """The closed form, then its corrections by gradient; rank zero gets the best checkpoint's map.
    Raises ValueError when the training split has fewer than two sessions with a heard receiver."""
    # its choices go on the run (`radio_map_*`, the val median too); the epochs the service sees are Lightning's
    closed_form, _ = fit_closed_form(data, run.tracking)
    train, val = posterior_inputs(closed_form, data, "train"), posterior_inputs(closed_form, data, "val")
    module = LearnedMapModule.start_from(closed_form, config.learning_rate, len(train))
    result = fit_with_lightning(module, batch_loaders(train, val, config), config, run)
    if not result.is_global_zero:
        return result
    return replace(result, net=load(result.best_checkpoint))


def load(checkpoint: Path) -> RadioMapNet:
    """The map a learned-map checkpoint holds, corrections baked in. Raises ConfigError for any other file."""
    try:
        module = LearnedMapModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"--checkpoint {checkpoint} is not a learned radio map's Lightning checkpoint: {exc}",
                          stage="train") from exc
    return module.baked()
