"""Pushing a job's checkpoints to object storage at each epoch end, without stalling training.

The copy is taken at the epoch end (a local file copy); the upload runs in one background
thread. A failed upload is retried with backoff and logged; only the job's last push decides
whether the job can end: a job that would end with no checkpoint uploaded at all fails
(retryable), since no other replica could resume it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from pytorch_lightning import Callback

from foundation import checkpoint_store
from foundation.errors import StorageUnavailable
from foundation.logs import log_event

log = logging.getLogger(__name__)
TRIES, BACKOFF_S = 4, 1.0


class CheckpointSync(Callback):
    def __init__(self, store, local_dir: Path):
        self.store, self.local_dir = store, local_dir
        self.pushed: dict[str, tuple[int, int]] = {}
        self.uploaded_any = False
        self.thread: threading.Thread | None = None

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero and (self.thread is None or not self.thread.is_alive()):
            self.thread = threading.Thread(target=self.push_once, args=(trainer.current_epoch + 1,), daemon=True)
            self.thread.start()  # an upload still running means this epoch's state goes with the next

    def push_once(self, epoch: int) -> bool:
        keep = {p.name for p in self.local_dir.glob(f"*{checkpoint_store.SUFFIX}")}
        for attempt in range(1, TRIES + 1):
            folder, changed = checkpoint_store.snapshot(self.local_dir, self.pushed)
            try:
                checkpoint_store.push(self.store, folder, keep)
            except (StorageUnavailable, OSError) as exc:
                log.warning("checkpoint upload failed (try %d of %d): %s", attempt, TRIES, exc,
                            extra={"fields": {"event": "checkpoint upload failed", "epoch": epoch}})
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
                continue
            self.pushed.update(changed)
            self.uploaded_any = self.uploaded_any or "last.ckpt" in self.pushed
            if changed:
                log_event(log, "checkpoint uploaded", stage="train", epoch=epoch, files=sorted(changed))
            return True
        return False

    def finish(self, epoch: int | None) -> None:
        """After fit (or its SIGTERM checkpoint): wait for the upload in flight, push the last state."""
        if self.thread is not None:
            self.thread.join()
        if not self.push_once(epoch or 0) and not self.uploaded_any:
            raise StorageUnavailable(f"{self.store.uri}: no checkpoint of this job could be uploaded")
