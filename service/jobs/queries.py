"""Reading the job store: jobs, the outbox backlog, and the figures metrics and ops show.

Nothing here changes state (the job store in `service.jobs.store` is the only writer).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from service.jobs.database import Database
from service.jobs.tables import LIVE, Job, JobStatus, OutboxMessage, job_from_row, jobs, outbox, utcnow


class JobQueries:
    def __init__(self, db: Database):
        self.transaction = db.transaction

    def ping(self) -> None:
        """Returns once the database answers. Raises JobStoreUnavailable, NoJobStore."""
        with self.transaction(write=False) as conn:
            conn.execute(sa.select(sa.func.count()).select_from(jobs).where(sa.false()))

    def pending_messages(self, limit: int = 100, exclude: Iterable[str] = ()) -> list[OutboxMessage]:
        """Unpublished rows, oldest first, leaving out `exclude` (rows waiting for a retry)."""
        query = sa.select(outbox.c.id, outbox.c.routing_key, outbox.c.body, outbox.c.created_at).where(
            outbox.c.published_at.is_(None))
        if exclude := list(exclude):
            query = query.where(outbox.c.id.not_in(exclude))
        with self.transaction(write=False) as conn:
            rows = conn.execute(query.order_by(outbox.c.created_at, outbox.c.id).limit(limit)).all()
        return [OutboxMessage(**row._asdict()) for row in rows]

    def unpublished(self, ids: Iterable[str]) -> set[str]:
        """Which of `ids` are still waiting in the outbox."""
        with self.transaction(write=False) as conn:
            return set(conn.execute(sa.select(outbox.c.id).where(
                outbox.c.id.in_(list(ids)), outbox.c.published_at.is_(None))).scalars())

    def pending_count(self) -> int:
        with self.transaction(write=False) as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(outbox)
                                .where(outbox.c.published_at.is_(None))).scalar_one()

    def get(self, job_id: str) -> Job | None:
        with self.transaction(write=False) as conn:
            return get_job(conn, job_id)

    def list_jobs(self, status: JobStatus | None = None, limit: int = 50) -> list[Job]:
        """Newest first."""
        query = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit)
        if status is not None:
            query = query.where(jobs.c.status == JobStatus(status).value)
        with self.transaction(write=False) as conn:
            return [job_from_row(row) for row in conn.execute(query)]

    def counts_by_status(self) -> dict[str, int]:
        with self.transaction(write=False) as conn:
            rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
        return {status.value: 0 for status in JobStatus} | {status: count for status, count in rows}

    def last_success_at(self) -> datetime | None:
        with self.transaction(write=False) as conn:
            return conn.execute(sa.select(jobs.c.finished_at).where(jobs.c.status == JobStatus.SUCCEEDED.value)
                                .order_by(jobs.c.finished_at.desc()).limit(1)).scalar()

    def known_dataset(self, dataset_id: str, version: int | None = None) -> tuple[int, str] | None:
        """(version, dataset_uri) of that version, or of the highest one when None, as recorded by
        any job ever accepted for the dataset (any status); None if no job names it."""
        query = sa.select(jobs.c.dataset_version, jobs.c.dataset_uri).where(jobs.c.dataset_id == dataset_id)
        if version is not None:
            query = query.where(jobs.c.dataset_version == version)
        query = query.order_by(jobs.c.dataset_version.desc(), jobs.c.created_at.desc(), jobs.c.id).limit(1)
        with self.transaction(write=False) as conn:
            row = conn.execute(query).first()
        return None if row is None else (row.dataset_version, row.dataset_uri)

    def oldest_queued_age_s(self, now: datetime | None = None) -> float | None:
        """How long the longest-waiting due QUEUED job has been claimable (since not_before)."""
        now = now or utcnow()
        with self.transaction(write=False) as conn:
            oldest = conn.execute(sa.select(jobs.c.not_before).where(
                jobs.c.status == JobStatus.QUEUED.value, jobs.c.not_before <= now,
            ).order_by(jobs.c.not_before).limit(1)).scalar()
        return None if oldest is None else (now - oldest).total_seconds()


def get_job(conn, job_id: str, *, lock: bool = False) -> Job | None:
    query = sa.select(jobs).where(jobs.c.id == job_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    return job_from_row(row) if row else None


def live_job_by_key(conn, key: str) -> Job | None:
    """The one QUEUED, RUNNING or SUCCEEDED job holding key (a partial unique index keeps it one)."""
    row = conn.execute(sa.select(jobs).where(
        jobs.c.idempotency_key == key, jobs.c.status.in_([status.value for status in LIVE]),
    )).first()
    return job_from_row(row) if row else None
