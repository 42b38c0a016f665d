"""Retention: what the service keeps, and for how long; the purge runs inside `serve`.

- Finished jobs (succeeded, failed, cancelled) older than `retention_s`, with their outbox rows
  and their checkpoint folders; never a job whose last events are still waiting to be published,
  nor one whose checkpoints a queued or running job resumes or exports from. A replayed trigger
  for a purged job is still answered without training: the registry finds the version by its
  idempotency key.
- Processed event ids older than `retention_s` (at least a day, far longer than any redelivery).
- Published outbox rows that belong to no job, older than `retention_s`.
- Cached shards not read for `cache_retention_s` and baseline scores as old, and staging
  folders left by a crashed open.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from foundation.checkpoint_store import job_store
from service.jobs.store import JobStatus, JobStore, utcnow
from service.jobs.tables import jobs, outbox, processed_events
from foundation.settings import Settings

log = logging.getLogger(__name__)
STAGING_MAX_AGE_S = 86400.0  # an open that has not committed in a day has crashed
FINISHED = [JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value]


@dataclass
class Purged:
    jobs: int = 0
    events: int = 0
    outbox_rows: int = 0
    checkpoints: int = 0
    cache_files: int = 0


def purge(store: JobStore, settings: Settings, now: datetime | None = None) -> Purged:
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.retention_s)
    purged = Purged()
    with store.transaction(write=True) as conn:
        unpublished = sa.exists().where(outbox.c.job_id == jobs.c.id, outbox.c.published_at.is_(None))
        needed = [r.checkpoint_uri for r in conn.execute(sa.select(jobs.c.checkpoint_uri).where(
            jobs.c.status.not_in(FINISHED), jobs.c.checkpoint_uri.is_not(None)))]
        old = [r.id for r in conn.execute(sa.select(jobs.c.id).where(
            jobs.c.status.in_(FINISHED), jobs.c.finished_at < cutoff, ~unpublished))
            if not any(f"/{r.id}/" in uri for uri in needed)]  # a queued resume or export still reads it
        if old:
            purged.outbox_rows += conn.execute(sa.delete(outbox).where(
                outbox.c.job_id.in_(old), outbox.c.published_at.is_not(None))).rowcount
            purged.jobs = conn.execute(sa.delete(jobs).where(jobs.c.id.in_(old))).rowcount
        purged.events = conn.execute(sa.delete(processed_events).where(
            processed_events.c.received_at < cutoff)).rowcount
        purged.outbox_rows += conn.execute(sa.delete(outbox).where(
            outbox.c.job_id.is_(None), outbox.c.published_at < cutoff)).rowcount
    for job_id in old:
        purged.checkpoints += purge_checkpoints(settings, job_id)
    purged.cache_files = purge_cache(settings.cache_dir, settings.cache_retention_s, now.timestamp())
    return purged


def purge_checkpoints(settings: Settings, job_id: str) -> int:
    """The job's local checkpoint folder and its uploaded copies; 1 if anything was there."""
    found = 0
    folder = settings.job_checkpoint_dir(job_id)
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        found = 1
    if settings.checkpoints_uri:
        uploaded = job_store(settings.checkpoints_uri, job_id, settings.s3.credentials())
        for name in uploaded.list():
            uploaded.delete(name)
            found = 1
    return found


def purge_cache(cache_dir: Path, retention_s: float, now_s: float | None = None) -> int:
    """Cached shards, baseline scores and traced ONNX graphs unused longer than retention_s (last
    used: the mtime of a shard's marker `verified/<hex[:2]>/<hex>`, which the reader touches, or of
    the file itself; see training/datasets/cache.py and training/export_cache.py), markers
    whose file is gone, and what a killed process left older than a day: staging folders, partial
    graphs (`onnx-graphs/.tmp-*`) and partial scores (`baselines/*.part`).
    Returns how many cache files and folders were removed."""
    now_s = time.time() if now_s is None else now_s
    removed = 0
    for entry in (cache_dir / "sha256").glob("*/*"):
        marker = cache_dir / "verified" / entry.parent.name / entry.name
        if now_s - max(entry.stat().st_mtime, marker.stat().st_mtime if marker.is_file() else 0.0) > retention_s:
            entry.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            removed += 1
    for entry in [*(cache_dir / "baselines").glob("*.npz"), *(cache_dir / "onnx-graphs").glob("*.onnx")]:
        if now_s - entry.stat().st_mtime > retention_s:
            entry.unlink(missing_ok=True)
            removed += 1
    for marker in (cache_dir / "verified").glob("*/*"):
        if not (cache_dir / "sha256" / marker.parent.name / marker.name).is_file() \
                and now_s - marker.stat().st_mtime > STAGING_MAX_AGE_S:
            marker.unlink(missing_ok=True)  # its file was removed, or a crash left a partial marker
    for left in [*(cache_dir / "staging").glob("open-*"), *(cache_dir / "onnx-graphs").glob(".tmp-*"),
                 *(cache_dir / "baselines").glob("*.part")]:
        if now_s - left.stat().st_mtime > STAGING_MAX_AGE_S:
            if left.is_dir():
                shutil.rmtree(left, ignore_errors=True)
            else:
                left.unlink(missing_ok=True)
            removed += 1
    return removed
