"""The neural family's fit (training.neural.builder): the LightningModule, the data loaders and
the Trainer with its callbacks. Only Lightning lives here; the recipe sees a `FitResult`.

Validation logs `val_loss` (plain Gaussian NLL, the monitored key) and `val_median_error_m`, both
computed on the device (no batch goes back to the CPU inside a step).
Training minimises β-NLL (`gaussian_nll`) so the mean keeps learning while the covariance grows honest.

Size: everything Lightning-specific in one place: the module, its loss, the loaders, the callbacks
(progress, the SIGTERM checkpoint, uploads) and the Trainer.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import KubeflowEnvironment
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Dataset

from foundation.train_config import TrainConfig
from training.datasets.reader import VerifiedDataset
from foundation.errors import JobInterrupted
from training.checkpoint_sync import CheckpointSync
from foundation.child_protocol import Progress, channel
from foundation.logs import log_event
from training.family import FitResult, FitRun
from training.neural.model import LocalizationNet

log = logging.getLogger(__name__)
MONITOR = "val_loss"


class SessionDataset(Dataset):
    """Labelled sessions of a verified dataset, read a batch at a time.

    The DataLoader hands `__getitems__` a whole batch of indices: its sessions are read into one
    [B, R, S, 2] array, instead of B small ones that `default_collate` would copy again.
    """

    def __init__(self, data: VerifiedDataset, indices: np.ndarray):
        self.data, self.indices = data, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, ks: list[int]) -> dict[str, torch.Tensor]:
        chosen = self.indices[np.asarray(ks, dtype=np.int64)]
        iq, online, rx = self.data.model_inputs(chosen)
        return {"iq": torch.from_numpy(iq), "rx_position": torch.from_numpy(rx), "rx_online": torch.from_numpy(online),
                "target": torch.from_numpy(self.data.emitter[chosen, :2].astype(np.float32))}


def whole_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DataLoader's collate_fn: `SessionDataset.__getitems__` already returns the batch."""
    return batch


def drop_receivers(online: torch.Tensor, probability: float) -> torch.Tensor:
    """Mark online receivers offline at random; a session keeps at least two of its receivers."""
    if probability <= 0:
        return online
    kept = online * (torch.rand_like(online) >= probability).float()
    enough = kept.sum(dim=1, keepdim=True) >= torch.minimum(online.sum(dim=1, keepdim=True),
                                                            torch.full_like(online[:, :1], 2.0))
    return torch.where(enough, kept, online)


class LocalizationModule(pl.LightningModule):
    def __init__(self, samples: int, preset: str, sample_rate_hz: float, learning_rate: float,
                 weight_decay: float, beta: float, frame_scale_m: float, receiver_dropout: float = 0.0):
        super().__init__()
        self.save_hyperparameters()  # a checkpoint of an earlier version may hold more: Lightning drops unknown ones
        self.net = LocalizationNet(samples=samples, preset=preset, sample_rate_hz=sample_rate_hz,
                                   frame_scale_m=frame_scale_m)
        self._val_errors: list[torch.Tensor] = []

    def forward(self, iq, rx_position, rx_online):
        return self.net(iq, rx_position, rx_online)

    def _nll(self, batch, beta: float) -> torch.Tensor:
        mean, chol, origin = self.net.forward_local(batch["iq"], batch["rx_position"], batch["rx_online"])
        target = self.net.target_to_local(batch["target"], origin)
        return gaussian_nll(mean, chol, target, beta).mean()

    def training_step(self, batch, batch_idx):
        batch = {**batch, "rx_online": drop_receivers(batch["rx_online"], self.hparams.receiver_dropout)}
        loss = self._nll(batch, self.hparams.beta)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["iq"]))
        return loss

    def validation_step(self, batch, batch_idx):
        mean, chol, origin = self.net.forward_local(batch["iq"], batch["rx_position"], batch["rx_online"])
        target = self.net.target_to_local(batch["target"], origin)
        self.log(MONITOR, gaussian_nll(mean, chol, target).mean(), on_epoch=True, prog_bar=True,
                 batch_size=len(batch["iq"]))
        # metres in the local frame, on the device (the test split's haversine errors are `evaluation`'s)
        self._val_errors.append((mean - target).norm(dim=1) * self.net.frame_scale_m)

    def on_validation_epoch_end(self):
        if self._val_errors:
            self.log("val_median_error_m", torch.cat(self._val_errors).median().float())
            self._val_errors.clear()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.learning_rate,
                                      weight_decay=self.hparams.weight_decay)
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        # A lambda schedule (warm-up, then cosine) is recomputed from the current run's length,
        # so `--resume_training` with more epochs stretches it instead of overrunning it.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def warmup_cosine(total_steps: int, warmup_share: float = 0.1, floor: float = 0.02):
    warmup = max(int(total_steps * warmup_share), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class ProgressLines(Callback):
    """One structured log line per epoch: what the service turns into `training.progress`.

    `on_train_epoch_end` runs after the epoch's validation, so every metric is this epoch's.
    """

    def __init__(self, max_epochs: int):
        self.max_epochs = max_epochs
        self._started = 0.0

    def on_train_start(self, trainer, pl_module):
        self._started = time.monotonic()
        self._first_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return  # one line per epoch, not one per DDP rank
        done = trainer.current_epoch + 1
        elapsed = time.monotonic() - self._started
        per_epoch = elapsed / max(done - self._first_epoch, 1)
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
                   if k in ("train_loss", MONITOR, "val_median_error_m")}
        eta_s = round(per_epoch * (self.max_epochs - done), 1)
        log_event(log, "progress", stage="train", epoch=done, max_epochs=self.max_epochs, metrics=metrics, eta_s=eta_s)
        channel().send(Progress(epoch=done, max_epochs=self.max_epochs, metrics=metrics, eta_s=eta_s))


class CheckpointOnInterrupt(Callback):
    """On SIGTERM Lightning stops after the current batch; save where it stopped, to resume there."""

    def __init__(self, checkpoint_dir: Path):
        self.checkpoint_dir = checkpoint_dir

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.checkpoint_dir / "last.ckpt")  # every rank: it holds a barrier
            if trainer.is_global_zero:
                log_event(log, "checkpointed", stage="train", epoch=trainer.current_epoch,
                          global_step=trainer.global_step, reason="SIGTERM")


class StopTogether(Callback):
    """SIGTERM under DDP: every rank stops after the same batch.

    Lightning's own handler acts wherever each rank happens to be when the signal lands (and
    broadcasts from inside the handler), which deadlocks when the signal reaches every rank, as
    the service's `killpg` does. Here the signal only sets a flag; after each training batch the
    ranks agree (any rank asked) and all raise together, so the checkpoint's barrier lines up.
    """

    def __init__(self):
        self.asked = False

    def on_train_start(self, trainer, pl_module):
        if trainer.world_size > 1:  # replaces Lightning's handler; its teardown restores the original
            signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame):
        self.asked = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(self.asked, all=False):
            raise SIGTERMException


def build_loaders(data: VerifiedDataset, config: TrainConfig) -> tuple[DataLoader, DataLoader]:
    """The neural family's loaders: the labelled sessions themselves."""
    return batch_loaders(SessionDataset(data, data.indices("train")), SessionDataset(data, data.indices("val")),
                         config)


def batch_loaders(train: Dataset, val: Dataset, config: TrainConfig) -> tuple[DataLoader, DataLoader]:
    """Loaders over datasets that hand out whole batches (`__getitems__`): train shuffled from the seed,
    its last short batch dropped when there is more than one, val in order."""
    generator = torch.Generator().manual_seed(config.seed)
    common = {"batch_size": config.batch_size, "num_workers": config.num_workers, "collate_fn": whole_batch,
              "persistent_workers": config.num_workers > 0}
    return (DataLoader(train, shuffle=True, drop_last=len(train) > config.batch_size, generator=generator, **common),
            DataLoader(val, shuffle=False, **common))


def build_trainer(config: TrainConfig, checkpoint_dir: Path, logger,
                  extra_callbacks: tuple[Callback, ...] = ()) -> tuple[pl.Trainer, ModelCheckpoint]:
    checkpoints = ModelCheckpoint(dirpath=checkpoint_dir, filename="epoch{epoch:03d}-val_loss{val_loss:.4f}",
                                  auto_insert_metric_name=False, monitor=MONITOR, mode="min",
                                  save_top_k=3, save_last=True,
                                  # another replica's pulled last.ckpt is overwritten, not kept beside a last-v1
                                  enable_version_counter=False)
    callbacks = [checkpoints, EarlyStopping(monitor=MONITOR, mode="min", patience=config.patience),
                 LearningRateMonitor(logging_interval="epoch"), ProgressLines(config.epochs),
                 CheckpointOnInterrupt(checkpoint_dir), StopTogether(), *extra_callbacks]
    trainer = pl.Trainer(max_epochs=config.epochs, accelerator=config.accelerator, devices=_devices(config.devices),
                         precision=config.precision,
                         num_nodes=config.num_nodes, plugins=[KubeflowEnvironment()] if config.cluster == "kubeflow"
                         else None, logger=logger, callbacks=callbacks, deterministic=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=10, gradient_clip_val=1.0,
                         num_sanity_val_steps=0)
    return trainer, checkpoints


def _devices(value: str):
    return int(value) if value.isdigit() else value


def fit(module: pl.LightningModule, loaders: tuple[DataLoader, DataLoader], config: TrainConfig,
        run: FitRun) -> FitResult:
    """Train until early stopping or `config.epochs`; resumes epoch, optimizer and scheduler from
    `run.resume_from`. Lightning logs to the job's MLflow run, given the run's id. With checkpoint
    uploads, the checkpoints go to object storage after every epoch and once more at the end.
    The result holds no network (`net` None): the family loads the one it wants from the checkpoints."""
    from pytorch_lightning.loggers import MLFlowLogger

    # every rank needs a logger (LearningRateMonitor asks for one); Lightning writes through rank zero's alone
    logger = MLFlowLogger(tracking_uri=run.tracking.tracking_uri, run_id=run.tracking.run_id)
    sync = CheckpointSync(run.checkpoint_uploads, run.checkpoint_dir) if run.checkpoint_uploads else None
    checkpoint_dir, resume_from = run.checkpoint_dir, run.resume_from
    pl.seed_everything(config.seed, workers=True, verbose=False)
    train, val = loaders
    trainer, checkpoints = build_trainer(config, checkpoint_dir, logger, (sync,) if sync else ())
    started = time.monotonic()
    try:
        trainer.fit(module, train, val, ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
    except SIGTERMException as exc:
        if not trainer.is_global_zero:  # rank zero reports it (exit 3); an extra rank exiting non-zero
            # would make Lightning SIGKILL rank zero
            return FitResult.extra_rank(trainer.current_epoch, time.monotonic() - started)
        if sync:
            sync.finish(trainer.current_epoch)  # the SIGTERM checkpoint, for whichever replica resumes
        raise JobInterrupted(f"stopped by SIGTERM at epoch {trainer.current_epoch}; resume from "
                             f"{checkpoint_dir / 'last.ckpt'}") from exc
    if not trainer.is_global_zero:
        return FitResult.extra_rank(trainer.current_epoch, time.monotonic() - started)
    if sync:
        sync.finish(trainer.current_epoch)
    best = Path(checkpoints.best_model_path) if checkpoints.best_model_path else None
    last = Path(checkpoints.last_model_path) if checkpoints.last_model_path else None
    best_score = checkpoints.best_model_score
    return FitResult(net=None, best_checkpoint=best or last, last_checkpoint=last, epochs_run=trainer.current_epoch,
                     best_epoch=_epoch_of(best), best_val_loss=None if best_score is None or
                     not math.isfinite(float(best_score)) else float(best_score),
                     is_global_zero=trainer.is_global_zero, fit_s=time.monotonic() - started)


def _epoch_of(checkpoint: Path | None) -> int | None:
    if checkpoint is None:
        return None
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])


def gaussian_nll(mean: torch.Tensor, chol: torch.Tensor, target: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """Per-sample 2D Gaussian NLL with covariance chol @ chol.T, weighted by β-NLL.

    loss_i = stopgrad(det(Σ_i)^(β/2)) · NLL_i, all in the scaled local frame (so the weight is
    in units of LOCAL_SCALE_M²). β = 0 is the plain NLL; β > 0 keeps confident-but-wrong
    samples from dominating the gradient of the mean (Seitzer et al. 2022).
    """
    residual = target - mean
    l11, l21, l22 = chol[:, 0, 0], chol[:, 1, 0], chol[:, 1, 1]
    z1 = residual[:, 0] / l11  # z = L^-1 r by forward substitution
    z2 = (residual[:, 1] - l21 * z1) / l22
    half_log_det = torch.log(l11) + torch.log(l22)
    nll = 0.5 * (z1**2 + z2**2) + half_log_det + math.log(2 * math.pi)
    if beta == 0.0:
        return nll
    return torch.exp(beta * half_log_det).detach() * nll
