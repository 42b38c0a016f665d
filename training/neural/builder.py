"""The neural family's builder (presets tiny, small, large): a `LocalizationNet` trained by gradient.

The fit is Lightning's (`training.fit`): checkpoints every epoch, `--resume_training` goes on from
epoch, optimizer and scheduler, and the network returned is the best checkpoint's (lowest `val_loss`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from foundation.errors import ConfigError
from foundation.train_config import TrainConfig
from training.datasets.verified import VerifiedDataset
from training.family import FitResult, FitRun
from training.fit import LocalizationModule, build_loaders, fit as fit_with_lightning
from training.neural.model import LocalizationNet, frame_scale_for


def new_module(data: VerifiedDataset, config: TrainConfig) -> LocalizationModule:
    """An untrained module for this dataset's captures, its local frame sized to the receivers' layout."""
    return LocalizationModule(samples=data.manifest.samples_per_capture, preset=config.preset,
                              sample_rate_hz=data.manifest.sample_rate_hz, learning_rate=config.learning_rate,
                              weight_decay=config.weight_decay, beta=config.beta,
                              receiver_dropout=config.receiver_dropout,
                              frame_scale_m=frame_scale_for(data.rx_position[:, :2].astype(np.float64)))


def fit(data: VerifiedDataset, config: TrainConfig, run: FitRun) -> FitResult:
    """Train a new module (or go on from `run.resume_from`); rank zero gets the best checkpoint's network."""
    module = new_module(data, config)
    result = fit_with_lightning(module, build_loaders(data, config), config, run)
    if not result.is_global_zero:
        return result
    return replace(result, net=load(result.best_checkpoint))


def load(checkpoint: Path) -> LocalizationNet:
    """The network of a Lightning checkpoint that `fit` wrote. Raises ConfigError for another family's file."""
    try:
        module = LocalizationModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=True)
    except (KeyError, TypeError) as exc:  # no hyperparameters, or not this module's
        raise ConfigError(f"--checkpoint {checkpoint} is not a checkpoint of a neural preset ({exc})",
                          stage="train") from exc
    return module.net.eval()
