"""The training configuration: every knob that changes the trained model, in one place.

The resolved configuration is saved with the artifacts (model card, MLflow params) and its
hash is part of a job's identity: one dataset version with one configuration yields at most
one registered model.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Fields that decide where and how fast training runs, not what it produces.
RUNTIME_FIELDS = frozenset({"num_workers", "accelerator", "devices", "num_nodes", "cluster", "precision"})


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(40, ge=1)  # upper bound; early stopping usually ends sooner
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(3e-3, gt=0)  # peak of the one-cycle schedule
    weight_decay: float = Field(1e-4, ge=0)
    # Shares of spatial blocks (labelled sessions) or of sessions (unlabelled) drawn to val and test;
    # fixed per dataset lineage, or a candidate and its champion meet different test sessions.
    validation_split: float = Field(0.15, gt=0, lt=0.5)
    test_split: float = Field(0.15, gt=0, lt=0.5)
    # The spatial split (training.datasets.splits) decides which places a model is scored on, so its
    # geometry is part of the model's identity; like the shares, keep it fixed per dataset lineage.
    # Block side: this fraction of the diagonal of the receivers' bounding box, rounded to 1-2-5 and at
    # least 100 m: about 50 blocks over the network, each far wider than near-duplicate sessions lie apart.
    spatial_block_fraction: float = Field(0.1, gt=0, le=1)
    # Buffer: training sessions within this fraction of a block of a val or test block, and val sessions
    # as near a test block, are left out. A quarter keeps 2/3 of training sessions on evenly spread data and
    # makes about the distance POWDER's unbuffered blocks left to the nearest training transmitter the floor.
    spatial_buffer_fraction: float = Field(0.25, ge=0, le=1)
    # "radio-map": a grid posterior with a residual map, fitted in closed form (training.radio_map.model).
    # "radio-map-learned", the default: that fit as the start, then corrections learnt by gradient in
    # Lightning (training.radio_map.learned); it beat the closed form on the bench (docs/bench.md).
    # Otherwise a neural net's encoder size, see training.neural.model.PRESETS.
    preset: Literal["tiny", "small", "large", "radio-map", "radio-map-learned"] = "radio-map-learned"
    beta: float = Field(0.5, ge=0, le=1)  # β-NLL weight: 0 = plain NLL, 1 = MSE-like gradients for the mean
    # Training-only augmentation: each online receiver is marked offline with this probability
    # (receivers do go offline), so the model cannot lean on any one of them.
    receiver_dropout: float = Field(0.1, ge=0, lt=0.5)
    patience: int = Field(10, ge=1)  # early-stopping patience in epochs on val_loss
    min_labelled_sessions: int = Field(20, ge=3)  # fewer labelled sessions than this: refuse to train
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    accelerator: str = "auto"  # "auto" picks a GPU when there is one
    devices: str = "auto"  # per node; "2" with accelerator "cpu" runs DDP over gloo
    # Lightning's precision for a fit by gradient: "32-true", "bf16-mixed" or "16-mixed" on a GPU
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    num_nodes: int = Field(1, ge=1)  # machines in a DDP run (torchrun, a Kubeflow PyTorchJob), each with `devices`
    # Lightning detects SLURM and torchrun by itself; a Kubeflow PyTorchJob (RANK, WORLD_SIZE, MASTER_ADDR
    # per pod, one process each) must be named, since its variables look like any other launcher's.
    cluster: Literal["auto", "kubeflow"] = "auto"

    def config_hash(self) -> str:
        """SHA-256 (first 16 hex) of the fields that change the model."""
        payload = self.model_dump(exclude=set(RUNTIME_FIELDS))
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def job_key(dataset_id: str, version: int, config_hash: str, *, export_only: bool = False,
            checkpoint: str | None = None) -> str:
    """The identity of a job's outcome: one dataset version + one configuration = one model.

    A job that starts from a checkpoint (export-only, or resuming another job) is keyed by the
    checkpoint too: exporting another checkpoint is another model.
    """
    key = f"{dataset_id}/v{version}/{config_hash}"
    if checkpoint is None:
        return key
    mode = "export" if export_only else "resume"
    return f"{key}/{mode}-{hashlib.sha256(checkpoint.encode()).hexdigest()[:12]}"
