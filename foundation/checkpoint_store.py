"""A job's checkpoints in object storage, so that any replica can resume any job.

Layout: `<HEIMDALL_CHECKPOINTS_URI>/<job_id>/<file>.ckpt` mirrors the job's local checkpoint
folder (`last.ckpt` and the top-k). The training child pushes after every epoch (in the
background, see `training.checkpoint_sync`); the worker pulls before it starts a job
whose folder is empty here, so a job claimed after another replica died resumes where that one
stopped. Both sides use only boto3 and the standard library.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from foundation.object_store import ObjectStore, join_uri, open_store

log = logging.getLogger(__name__)
SUFFIX = ".ckpt"


def job_store(checkpoints_uri: str, job_id: str, credentials) -> ObjectStore:
    return open_store(join_uri(checkpoints_uri, job_id), credentials)


def pull(store: ObjectStore, local_dir: Path) -> list[str]:
    """Download every checkpoint of the job that the local folder lacks; returns their names."""
    local_dir.mkdir(parents=True, exist_ok=True)
    pulled = []
    for name in store.list():
        if name.endswith(SUFFIX) and "/" not in name and not (local_dir / name).is_file():
            fd, tmp = tempfile.mkstemp(dir=local_dir, prefix=f".{name}.", suffix=".part")
            Path(tmp).unlink()
            store.download(name, Path(tmp))
            Path(tmp).replace(local_dir / name)
            pulled.append(name)
    return pulled


def snapshot(local_dir: Path, pushed: dict[str, tuple[int, int]]) -> tuple[Path, dict[str, tuple[int, int]]]:
    """Copies of the checkpoints changed since `pushed` (name -> (size, mtime_ns)), in a temporary
    folder, so that training may overwrite last.ckpt while they upload."""
    folder = Path(tempfile.mkdtemp(prefix=".push-", dir=local_dir))
    changed = {}
    for path in sorted(local_dir.glob(f"*{SUFFIX}")):
        stat = path.stat()
        if pushed.get(path.name) != (stat.st_size, stat.st_mtime_ns):
            shutil.copyfile(path, folder / path.name)
            changed[path.name] = (stat.st_size, stat.st_mtime_ns)
    return folder, changed


def push(store: ObjectStore, folder: Path, keep: set[str]) -> None:
    """Upload the snapshot's files, then delete remote checkpoints no longer kept (pruned top-k)."""
    try:
        for path in sorted(folder.iterdir(), key=lambda p: p.name != "last.ckpt"):  # last.ckpt first
            store.upload(path.name, path)
        for name in store.list():
            if name.endswith(SUFFIX) and name not in keep:
                store.delete(name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
