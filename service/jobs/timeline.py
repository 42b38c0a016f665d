"""A job's story, read back from the outbox: the timeline `jobs show` prints and the latest
progress `jobs list` shows.

Every event the service decides about a job (accepted, started, progress, failed, cancelled,
registered) is an outbox row with the job's id, its routing key, its CloudEvent JSON and the
time it was decided, published or not; so the rows alone tell what happened and when.
Reads only, through the job store's read transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from messages.constants import TRAINING_PROGRESS
from service.jobs.store import JobStore
from service.jobs.tables import outbox


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    routing_key: str  # training.accepted, training.started, ..., model.registered
    data: dict[str, Any]  # the event's `data`


@dataclass(frozen=True)
class Progress:
    at: datetime
    epoch: int
    max_epochs: int
    val_median_error_m: float | None
    eta_s: float | None


def _entry(row) -> TimelineEntry:
    return TimelineEntry(at=row.created_at, routing_key=row.routing_key, data=json.loads(row.body).get("data", {}))


def job_timeline(store: JobStore, job_id: str) -> list[TimelineEntry]:
    """The job's events, oldest first. Raises JobStoreUnavailable."""
    query = (sa.select(outbox.c.routing_key, outbox.c.body, outbox.c.created_at)
             .where(outbox.c.job_id == job_id).order_by(outbox.c.created_at, outbox.c.id))
    with store.transaction(write=False) as conn:
        return [_entry(row) for row in conn.execute(query)]


def latest_progress(store: JobStore, job_ids: list[str]) -> dict[str, Progress]:
    """The newest training.progress of each job that has one. Raises JobStoreUnavailable."""
    if not job_ids:
        return {}
    progress = outbox.c.routing_key == TRAINING_PROGRESS
    newest = (sa.select(outbox.c.job_id, sa.func.max(outbox.c.created_at).label("at"))
              .where(progress, outbox.c.job_id.in_(job_ids)).group_by(outbox.c.job_id).subquery())
    query = (sa.select(outbox.c.job_id, outbox.c.routing_key, outbox.c.body, outbox.c.created_at)
             .join(newest, sa.and_(outbox.c.job_id == newest.c.job_id, outbox.c.created_at == newest.c.at))
             .where(progress))
    with store.transaction(write=False) as conn:
        rows = conn.execute(query).all()
    found = {}
    for row in rows:
        data = _entry(row).data
        found[row.job_id] = Progress(at=row.created_at, epoch=data["epoch"], max_epochs=data["max_epochs"],
                                     val_median_error_m=data["metrics"].get("val_median_error_m"),
                                     eta_s=data.get("eta_s"))
    return found
