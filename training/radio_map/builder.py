"""The radio-map family's builder (preset radio-map): a closed-form fit, kept in a file of its own.

The file (`<checkpoint_dir>/last.ckpt`, the name every job's checkpoint has) is a plain `torch.save`
of the network's shapes and buffers, nothing else, so `torch.load(weights_only=True)` reads it and
`load` rebuilds the network from it.

Only rank zero of a distributed job fits: the fit is one process's work, and the other ranks
(torchrun, a Kubeflow PyTorchJob) return at once without a network, so one model is registered.
Resuming refits, since the fit is deterministic and about as long as one epoch of the `small` net; a
resume may also bring new data, which a kept map would ignore.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from foundation.errors import ConfigError
from foundation.train_config import TrainConfig
from training.datasets.verified import VerifiedDataset
from training.family import FitResult, FitRun, is_global_zero
from training.radio_map.model import RadioMapNet
from training.radio_map.train import fit_closed_form, report_closed_form

FILE_SCHEMA = "heimdall.radio-map/1"  # what a radio map file says it is


def fit(data: VerifiedDataset, config: TrainConfig, run: FitRun) -> FitResult:
    """Fit the map (rank zero only) and keep it in `run.checkpoint_dir`. Raises ValueError when the training
    split has fewer than two sessions with a heard receiver."""
    if not is_global_zero():
        return FitResult.extra_rank(epochs_run=None, fit_s=0.0)
    started = time.monotonic()
    net, val_median_error_m = fit_closed_form(data, run.tracking)
    report_closed_form(run.tracking, val_median_error_m)
    fit_s = time.monotonic() - started
    path = save(net, run.checkpoint_dir / "last.ckpt")
    return FitResult(net=net.eval(), best_checkpoint=path, last_checkpoint=path, epochs_run=1, best_epoch=0,
                     is_global_zero=True, fit_s=fit_s)


def save(net: RadioMapNet, path: Path) -> Path:
    """Write the map whole or not at all (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    torch.save({"schema": FILE_SCHEMA, "samples": int(net.samples), "sample_rate_hz": float(net.sample_rate_hz),
                "shape": net.shape_args(), "state_dict": net.state_dict()}, partial)
    partial.replace(path)
    return path


def load(checkpoint: Path) -> RadioMapNet:
    """The map `save` wrote. Raises ConfigError for any other file (another family's checkpoint)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("schema") != FILE_SCHEMA:
        raise ConfigError(f"--checkpoint {checkpoint} is not a radio map ({FILE_SCHEMA})", stage="train")
    net = RadioMapNet(samples=saved["samples"], sample_rate_hz=saved["sample_rate_hz"], **saved["shape"])
    net.load_state_dict(saved["state_dict"])
    return net.eval()
