"""The job store: the only writer of job state, the event de-duplication and the outbox.

Every method is one database transaction, so a state change and the events announcing it are
committed together or not at all; a publisher loop sends the outbox later (at least once).
Works on SQLite (one node) and PostgreSQL (replicas sharing one store).

Its states, value types and errors are in `service.jobs.tables` and re-exported here.

Decisions the callers rely on:
- A claimed job with `cancel_requested` set must be finished cancelled without running it
  (a cancel that reached a job whose worker then died, or that was requeued).
- `attempt` counts claims: a reclaim after an expired lease is a new attempt, so a job that
  kills its worker every time still reaches the worker's maximum number of attempts.
- `worker_id` must be unique per process (e.g. host/pid/uuid): the claim is checked by it.
- Time is the database's clock, not a replica's: leases always (a replica whose clock is ahead by
  more than `lease_s` must not steal a running job), other times unless a caller passes `now`.

Size: every named transition of the job state machine, each one transaction; the tables,
queries and database handling live beside it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from service.jobs.database import DEFAULT_TIMEOUT_S, Database
from service.jobs.queries import JobQueries, get_job, live_job_by_key
from service.jobs.events import abandoned_failure
from service.jobs.tables import (
    LEGAL_TRANSITIONS, LIVE, AcceptResult, IllegalTransition, Job, JobStatus, JobStoreError, JobStoreUnavailable,
    LostClaim, NoJobStore, OutboxMessage, UnknownJob, idempotency_key, job_from_row, jobs, outbox, outbox_values,
    processed_events, utcnow,
)

ACCEPT_TRIES = 3  # an IntegrityError means another replica won a race: re-read, at most this often

__all__ = [
    "AcceptResult", "IllegalTransition", "Job", "JobStatus", "JobStore", "JobStoreError",
    "JobStoreUnavailable", "LostClaim", "NoJobStore", "OutboxMessage", "UnknownJob", "idempotency_key", "utcnow",
]


def _lock_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


class JobStore:
    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, create: bool = True):
        """timeout_s: the deadline of every call. create=False: an existing store only (for reading it)."""
        self.db = db = Database(url, timeout_s=timeout_s, create=create)
        self.engine, self.transaction, self.close = db.engine, db.transaction, db.close
        self.migrate, self.check_schema = db.migrate, db.check_schema
        self.read = JobQueries(self.db)  # everything that only reads

    # --- accepting triggers -------------------------------------------------------------

    def accept(
        self, *, event_id: str, trigger_kind: str, dataset_id: str, dataset_version: int, dataset_uri: str,
        config: dict[str, Any], config_hash: str, export_only: bool = False, checkpoint_uri: str | None = None,
        min_interval_s: float = 0, accepted_message: Callable[[Job], OutboxMessage],
        cancelled_message: Callable[[Job, str], OutboxMessage], now: datetime | None = None,
    ) -> AcceptResult:
        """Record a trigger event and the job it asks for, exactly once per event id and per
        idempotency key among live jobs (a failed or cancelled job does not block a new one for
        its key; a replayed event id stays a duplicate whatever its job's state). Auto triggers coalesce older queued versions and respect min_interval_s.
        Raises JobStoreUnavailable, ValueError (unknown trigger_kind)."""
        if trigger_kind not in ("auto", "manual"):
            raise ValueError(f"trigger_kind must be 'auto' or 'manual', not {trigger_kind!r}")
        key = idempotency_key(dataset_id, dataset_version, config_hash, export_only, checkpoint_uri)
        values = dict(
            idempotency_key=key, dataset_id=dataset_id, dataset_version=dataset_version, dataset_uri=dataset_uri,
            config=config, config_hash=config_hash, trigger_id=event_id, trigger_kind=trigger_kind,
            export_only=export_only, checkpoint_uri=checkpoint_uri,
        )
        for _ in range(ACCEPT_TRIES):
            try:
                with self.transaction(write=True) as conn:
                    return self._accept(conn, values, min_interval_s, accepted_message, cancelled_message,
                                        now or self.db.clock(conn))
            except sa.exc.IntegrityError:
                continue  # another replica recorded this event or key first; read what it wrote
        raise JobStoreUnavailable(f"event {event_id}: lost {ACCEPT_TRIES} races for key {key}")

    def _accept(self, conn, values, min_interval_s, accepted_message, cancelled_message, now) -> AcceptResult:
        event_id, auto = values["trigger_id"], values["trigger_kind"] == "auto"
        if self.db.postgres:  # serialise accepts per dataset, so coalescing sees every queued job
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key("accept:" + values["dataset_id"]))))
        seen = conn.execute(
            sa.select(processed_events.c.job_id).where(processed_events.c.event_id == event_id)).first()
        if seen is not None:
            job = get_job(conn, seen.job_id) if seen.job_id else None
            return AcceptResult(job, created=False, duplicate_event=True)
        existing = live_job_by_key(conn, values["idempotency_key"])
        if existing is None and auto:
            existing = self._newer_auto_job(conn, values["dataset_id"], values["dataset_version"])
        if existing is not None:
            self._record_event(conn, event_id, existing.id, now)
            return AcceptResult(existing, created=False, duplicate_event=False)
        superseded = self._supersede_older(conn, values, cancelled_message, now) if auto else []
        not_before = self._auto_not_before(conn, values["dataset_id"], min_interval_s, now) if auto else now
        row = conn.execute(sa.insert(jobs).values(
            id=str(uuid.uuid4()), **values, status=JobStatus.QUEUED.value, attempt=0, cancel_requested=False,
            not_before=not_before, created_at=now, updated_at=now,
        ).returning(*jobs.c)).one()
        job = job_from_row(row)
        self._add(conn, [accepted_message(job)], job.id, now)
        self._record_event(conn, event_id, job.id, now)
        return AcceptResult(job, created=True, duplicate_event=False, superseded=superseded)

    def _newer_auto_job(self, conn, dataset_id: str, version: int) -> Job | None:
        """An auto job for a newer version, queued, running or succeeded, makes an older trigger stale:
        a late dataset.ready never trains older data after newer data was trained."""
        row = conn.execute(sa.select(jobs).where(
            jobs.c.dataset_id == dataset_id, jobs.c.trigger_kind == "auto", jobs.c.dataset_version > version,
            jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.SUCCEEDED.value]),
        ).order_by(jobs.c.dataset_version.desc(), jobs.c.created_at.desc()).limit(1)).first()
        return job_from_row(row) if row else None

    def _supersede_older(self, conn, values, cancelled_message, now) -> list[Job]:
        reason = f"superseded by v{values['dataset_version']}"
        older = conn.execute(sa.select(jobs).where(
            jobs.c.dataset_id == values["dataset_id"], jobs.c.trigger_kind == "auto",
            jobs.c.dataset_version < values["dataset_version"], jobs.c.status == JobStatus.QUEUED.value,
            jobs.c.started_at.is_(None),
        ).order_by(jobs.c.created_at).with_for_update()).all()
        cancelled = []
        for row in older:
            job = self._must(conn, job_from_row(row), JobStatus.CANCELLED, now, cancel_reason=reason, finished_at=now)
            self._add(conn, [cancelled_message(job, reason)], job.id, now)
            cancelled.append(job)
        return cancelled

    def _auto_not_before(self, conn, dataset_id: str, min_interval_s: float, now: datetime) -> datetime:
        """Deferred, not dropped. Jobs cancelled before they ever ran do not count, so a stream
        of superseding versions cannot push training back forever."""
        last = conn.execute(sa.select(sa.func.max(jobs.c.created_at)).where(
            jobs.c.dataset_id == dataset_id, jobs.c.trigger_kind == "auto",
            ~sa.and_(jobs.c.status == JobStatus.CANCELLED.value, jobs.c.started_at.is_(None)),
        )).scalar()
        if last is None or min_interval_s <= 0:
            return now
        return max(now, last + timedelta(seconds=min_interval_s))

    # --- running jobs ---------------------------------------------------------------------

    def claim_next(self, worker_id: str, lease_s: float, now: datetime | None = None, *, max_attempts: int | None = None,
                   abandoned_message: Callable[[Job], OutboxMessage] | None = None) -> Job | None:
        """Claim the oldest due QUEUED job, or a RUNNING one whose lease expired, for exactly one
        worker across all replicas. A job whose lease expired on its last attempt (max_attempts)
        is not claimed but failed, with `abandoned_message`, in the same transaction. `now` (this
        replica's clock) decides what is due and stamps the run; the lease is the database's.
        Raises JobStoreUnavailable."""
        with self.transaction(write=True) as conn:
            clock = self.db.clock(conn)
            now = now or clock
            while True:
                row = conn.execute(sa.select(jobs).where(sa.or_(
                    sa.and_(jobs.c.status == JobStatus.QUEUED.value, jobs.c.not_before <= now),
                    sa.and_(jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_expires_at <= clock),
                )).order_by(jobs.c.created_at, jobs.c.id).limit(1).with_for_update(skip_locked=True)).first()
                if row is None:
                    return None
                job = job_from_row(row)
                if job.status is JobStatus.RUNNING and max_attempts is not None and job.attempt >= max_attempts:
                    self._abandon(conn, job, abandoned_message, now)
                    continue
                return self._transition(
                    conn, job, JobStatus.RUNNING, now, claimed_by=worker_id, attempt=job.attempt + 1,
                    lease_expires_at=clock + timedelta(seconds=lease_s), started_at=job.started_at or now,
                )

    def _abandon(self, conn, job: Job, message: Callable[[Job], OutboxMessage] | None, now: datetime) -> None:
        failed = self._must(conn, job, JobStatus.FAILED, now, error=abandoned_failure(job).model_dump(),
                            lease_expires_at=None, finished_at=now)
        self._add(conn, [message(failed)] if message else [], job.id, now)

    def renew_lease(self, job_id: str, worker_id: str, lease_s: float, now: datetime | None = None) -> bool:
        """False when the job is no longer RUNNING for worker_id: the worker must stop. The lease
        runs lease_s on the database's clock, whatever `now` says."""
        with self.transaction(write=True) as conn:
            clock = self.db.clock(conn)
            result = conn.execute(sa.update(jobs).where(
                jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value, jobs.c.claimed_by == worker_id,
            ).values(lease_expires_at=clock + timedelta(seconds=lease_s), updated_at=now or clock))
            return result.rowcount == 1

    def request_cancel(
        self, job_id: str, reason: str, cancelled_message: Callable[[Job, str], OutboxMessage],
        now: datetime | None = None,
    ) -> Job | None:
        """QUEUED: cancelled now. RUNNING: flagged; its worker stops and calls finish_cancelled.
        Terminal: unchanged. None if there is no such job. Raises JobStoreUnavailable."""
        with self.transaction(write=True) as conn:
            now = now or self.db.clock(conn)
            job = get_job(conn, job_id, lock=True)
            if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
                return job
            if job.status is JobStatus.QUEUED:
                job = self._must(conn, job, JobStatus.CANCELLED, now, cancel_requested=True, cancel_reason=reason,
                                 finished_at=now)
                self._add(conn, [cancelled_message(job, reason)], job.id, now)
                return job
            if not job.cancel_requested:
                conn.execute(sa.update(jobs).where(jobs.c.id == job_id)
                             .values(cancel_requested=True, cancel_reason=reason, updated_at=now))
            return get_job(conn, job_id)

    def finish_succeeded(self, job_id: str, worker_id: str, result: dict[str, Any],
                         messages: Iterable[OutboxMessage] = (), now: datetime | None = None) -> Job:
        """Raises IllegalTransition, LostClaim, UnknownJob, JobStoreUnavailable."""
        return self._release(job_id, worker_id, JobStatus.SUCCEEDED, messages, now, result=result)

    def finish_failed(self, job_id: str, worker_id: str, error: dict[str, Any],
                      messages: Iterable[OutboxMessage] = (), now: datetime | None = None) -> Job:
        """Raises IllegalTransition, LostClaim, UnknownJob, JobStoreUnavailable."""
        return self._release(job_id, worker_id, JobStatus.FAILED, messages, now, error=error)

    def finish_cancelled(self, job_id: str, worker_id: str, reason: str,
                         messages: Iterable[OutboxMessage] = (), now: datetime | None = None) -> Job:
        """Raises IllegalTransition, LostClaim, UnknownJob, JobStoreUnavailable."""
        return self._release(job_id, worker_id, JobStatus.CANCELLED, messages, now, cancel_reason=reason)

    def requeue(self, job_id: str, worker_id: str, *, delay_s: float = 0.0, not_before: datetime | None = None,
                error: dict[str, Any] | None = None, messages: Iterable[OutboxMessage] = (),
                now: datetime | None = None, keep_attempt: bool = False) -> Job:
        """RUNNING -> QUEUED, claim released: a retry after backoff (`delay_s` after the database's
        now, unless `not_before` is given), or a job handed back at shutdown (keep_attempt: a graceful
        stop is no failure, so rolling deploys never use up a job's attempts).
        Raises IllegalTransition, LostClaim, UnknownJob, JobStoreUnavailable."""
        given_back = {"attempt": jobs.c.attempt - 1} if keep_attempt else {}
        return self._release(job_id, worker_id, JobStatus.QUEUED, messages, now, not_before=not_before,
                             not_before_delay_s=delay_s, error=error, claimed_by=None, **given_back)

    def _release(self, job_id, worker_id, to: JobStatus, messages, now, **values) -> Job:
        with self.transaction(write=True) as conn:
            now = now or self.db.clock(conn)
            if "not_before_delay_s" in values:  # a requeue: measured on the database's clock, like leases
                delay_s = values.pop("not_before_delay_s")
                values["not_before"] = values["not_before"] or now + timedelta(seconds=delay_s)
            job = get_job(conn, job_id, lock=True)
            if job is None:
                raise UnknownJob(job_id)
            if to not in LEGAL_TRANSITIONS[job.status]:
                raise IllegalTransition(job_id, job.status, to)
            if job.claimed_by != worker_id:
                raise LostClaim(job_id, job.status, to, worker_id, job.claimed_by)
            finished_at = None if to is JobStatus.QUEUED else now
            job = self._must(conn, job, to, now, lease_expires_at=None, finished_at=finished_at, **values)
            self._add(conn, messages, job_id, now)
            return job

    def _transition(self, conn, job: Job, to: JobStatus, now: datetime, **values) -> Job | None:
        """The one place a status changes. None if the row changed since it was read."""
        if to not in LEGAL_TRANSITIONS[job.status]:
            raise IllegalTransition(job.id, job.status, to)
        claimed_by = jobs.c.claimed_by.is_(None) if job.claimed_by is None else jobs.c.claimed_by == job.claimed_by
        row = conn.execute(sa.update(jobs).where(
            jobs.c.id == job.id, jobs.c.status == job.status.value, jobs.c.attempt == job.attempt, claimed_by,
        ).values(status=to.value, updated_at=now, **values).returning(*jobs.c)).first()
        return job_from_row(row) if row else None

    def _must(self, conn, job: Job, to: JobStatus, now: datetime, **values) -> Job:
        changed = self._transition(conn, job, to, now, **values)
        if changed is None:  # cannot happen while the row is locked; guards a future caller that forgets
            raise JobStoreError(f"job {job.id} changed while being moved to {to.value}", retryable=True)
        return changed

    # --- outbox -------------------------------------------------------------------------------

    def add_messages(self, messages: Iterable[OutboxMessage], job_id: str | None = None,
                     now: datetime | None = None) -> None:
        """Events outside a transition (started, progress). Raises JobStoreUnavailable."""
        with self.transaction(write=True) as conn:
            self._add(conn, messages, job_id, now or self.db.clock(conn))

    def mark_published(self, ids: Iterable[str], now: datetime | None = None) -> None:
        ids = list(ids)
        if ids:
            with self.transaction(write=True) as conn:
                conn.execute(sa.update(outbox).where(outbox.c.id.in_(ids), outbox.c.published_at.is_(None))
                             .values(published_at=now or self.db.clock(conn)))

    def _add(self, conn, messages: Iterable[OutboxMessage], job_id: str | None, now: datetime) -> None:
        rows = [outbox_values(message, job_id, now) for message in messages]
        if rows:
            conn.execute(sa.insert(outbox), rows)

    def _record_event(self, conn, event_id: str, job_id: str | None, now: datetime) -> None:
        conn.execute(sa.insert(processed_events).values(event_id=event_id, job_id=job_id, received_at=now))
