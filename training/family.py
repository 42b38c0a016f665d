"""What a model family is to the recipe: a fit that returns a network, and a load of one it saved.

A family is a package with a `builder` module offering two functions (`Family`), listed by preset in
`training.families`. The recipe gives a fit the data, the configuration and a `FitRun` (where to keep
checkpoints, where to resume from, the MLflow run to log to); the fit returns a `FitResult` holding
the fitted network, an `nn.Module` whose `forward` is the ONNX graph of model.md. How a family fits
(Lightning, a closed form) and what its checkpoint file holds stay inside its package.

Every process of a distributed (DDP) job runs the recipe; only rank zero gets a network back and
goes on to export and register, the others return `FitResult.extra_rank`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import nn

from foundation.object_store import ObjectStore
from foundation.train_config import TrainConfig
from training.datasets.verified import VerifiedDataset
from training.tracking import TrackingRun

# where launchers (Lightning's own DDP re-execution, torchrun, Kubeflow, SLURM) put the process's rank;
# Lightning reads the same variables in the same order, so both agree before and during a fit
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_global_zero() -> bool:
    """This process is rank zero of its job (a job of one process is)."""
    rank = next((os.environ[name] for name in RANK_VARIABLES if name in os.environ), "0")
    return int(rank) == 0


@dataclass(frozen=True)
class FitRun:
    """Where one fit keeps its state and reports."""

    checkpoint_dir: Path  # the family's checkpoints; `last.ckpt` there is what a resume or export-only reads
    resume_from: Path | None  # a checkpoint to go on from (`--resume_training`)
    tracking: TrackingRun  # the job's MLflow run, for the fit's own metrics
    checkpoint_uploads: ObjectStore | None = None  # this job's checkpoints, pushed while it fits (another replica resumes)


@dataclass(frozen=True)
class FitResult:
    net: nn.Module | None  # the fitted network, ready for calibration and export; None on DDP ranks other than zero
    best_checkpoint: Path | None  # the file `--export_only --checkpoint` exports again
    last_checkpoint: Path | None
    epochs_run: int | None  # None when nothing was fitted (export-only)
    best_epoch: int | None
    # False in the extra processes of a distributed (DDP) run; no default, so that no fit can forget to say
    is_global_zero: bool
    best_val_loss: float | None = None
    fit_s: float = 0.0  # wall time of the fit itself

    @classmethod
    def extra_rank(cls, epochs_run: int | None, fit_s: float) -> "FitResult":
        """A DDP rank other than zero: it only helped fit; the checkpoint files are rank zero's, maybe on another node."""
        return cls(net=None, best_checkpoint=None, last_checkpoint=None, epochs_run=epochs_run, best_epoch=None,
                   is_global_zero=False, fit_s=fit_s)

    @classmethod
    def loaded(cls, net: nn.Module, checkpoint: Path) -> "FitResult":
        """A network an earlier job fitted (`--export_only`), loaded by rank zero: nothing fitted here."""
        return cls(net=net, best_checkpoint=checkpoint, last_checkpoint=None, epochs_run=None, best_epoch=None,
                   is_global_zero=True)


class Family(Protocol):
    """A model family's `builder` module."""

    def fit(self, data: VerifiedDataset, config: TrainConfig, run: FitRun) -> FitResult:
        """Fit on the training split, choose on the validation split, keep a checkpoint in `run.checkpoint_dir`.
        Raises TrainingError, JobInterrupted (SIGTERM, checkpoint kept); RuntimeError / ValueError are
        reported by the recipe as a failed fit."""

    def load(self, checkpoint: Path) -> nn.Module:
        """The network a fit of this family saved in `checkpoint`, in eval mode. Raises ConfigError when
        the file is not one of this family's."""
