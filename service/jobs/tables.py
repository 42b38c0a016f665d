"""The job store's vocabulary: job states and their legal transitions, the values and errors
the store hands out, and the tables behind them.

Errors (HeimdallError <- JobStoreError):
 ├── JobStoreUnavailable   database unreachable, busy or not answering in time: try again (retryable=True)
 ├── NoJobStore            the database answers but holds no job store at this schema version:
 │                         never migrated, a mistyped URL, another version's schema (retryable=False)
 ├── UnknownJob            no job with that id
 └── IllegalTransition     the transition table forbids it (a bug or a lost race)
      └── LostClaim        the job is RUNNING for another worker: stop, publish nothing

The tables here must match `service/migrations` (a test compares them); the migrations, not
`metadata.create_all`, create them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import sqlalchemy as sa

from foundation.train_config import job_key
from foundation.errors import HeimdallError


class JobStatus(str, Enum):
    #: Waiting for a worker; not claimable before `not_before` (min interval, retry backoff).
    QUEUED = "queued"
    #: Claimed by one worker, which holds a lease it must renew; if the lease expires the
    #: worker is presumed dead and another worker may reclaim the job.
    RUNNING = "running"
    #: Terminal: the model is registered (or exported) and `model.registered` is in the outbox.
    SUCCEEDED = "succeeded"
    #: Terminal: gave up; a final `training.failed` (retryable=false) is in the outbox.
    FAILED = "failed"
    #: Terminal: cancelled by ops or superseded by a newer dataset version.
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
#: States that hold their idempotency key: at most one job per key among them. A FAILED or
#: CANCELLED job releases it, so the same trigger (a new event) can run the job again.
LIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED})

#: Every state change the store makes, and nothing else. RUNNING -> RUNNING is the reclaim of
#: a job whose worker's lease expired; RUNNING -> QUEUED is a retry or a shutdown hand-back.
LEGAL_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class OutboxMessage:
    """One event waiting in the outbox. The store does not know event formats."""

    id: str  # the event id (CloudEvents `id`, AMQP `message_id`)
    routing_key: str
    body: bytes | str  # the JSON envelope; read back as str
    created_at: datetime | None = None  # None: the store stamps the transaction's `now`


@dataclass(frozen=True)
class Job:
    id: str
    idempotency_key: str
    dataset_id: str
    dataset_version: int
    dataset_uri: str
    config: dict[str, Any]
    config_hash: str
    trigger_id: str  # the event id that created the job
    trigger_kind: str  # "auto" (dataset.ready) | "manual" (training.requested)
    export_only: bool
    checkpoint_uri: str | None
    status: JobStatus
    attempt: int  # 0 until first claimed; +1 at every claim
    cancel_requested: bool
    cancel_reason: str | None
    claimed_by: str | None
    lease_expires_at: datetime | None
    not_before: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None


class JobStoreError(HeimdallError):
    stage = "job-store"


class JobStoreUnavailable(JobStoreError):
    retryable = True


class NoJobStore(JobStoreError):
    retryable = False


class UnknownJob(JobStoreError):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"job {job_id}: no such job")


class IllegalTransition(JobStoreError):
    def __init__(self, job_id: str, from_status: JobStatus, to_status: JobStatus, detail: str = ""):
        self.job_id, self.from_status, self.to_status = job_id, from_status, to_status
        text = f"job {job_id}: illegal transition {from_status.value} -> {to_status.value}"
        super().__init__(f"{text}: {detail}" if detail else text)


class LostClaim(IllegalTransition):
    def __init__(self, job_id: str, from_status: JobStatus, to_status: JobStatus, worker_id: str,
                 claimed_by: str | None):
        self.worker_id, self.claimed_by = worker_id, claimed_by
        super().__init__(job_id, from_status, to_status, f"claimed by {claimed_by}, not {worker_id}")


@dataclass(frozen=True)
class AcceptResult:
    job: Job | None  # the new job, or the one the trigger maps to (duplicate, same key, newer version)
    created: bool
    duplicate_event: bool
    superseded: list[Job] = field(default_factory=list)  # older queued auto jobs cancelled by this one


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def idempotency_key(dataset_id: str, dataset_version: int, config_hash: str, export_only: bool,
                    checkpoint_uri: str | None) -> str:
    """The job's key: `foundation.train_config.job_key`, the one definition."""
    return job_key(dataset_id, dataset_version, config_hash, export_only=export_only, checkpoint=checkpoint_uri)


class UtcDateTime(sa.types.TypeDecorator):
    """Timezone-aware UTC in and out. SQLite stores naive text, so UTC is attached on read;
    every value written is UTC, which keeps SQLite's text comparisons correct."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the job store takes timezone-aware times")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


#: The longest event id the store keeps (processed events, a job's trigger, the outbox). Like a NUL
#: character in any text (PostgreSQL refuses it), a longer one is refused where events come in.
EVENT_ID_MAX_CHARS = 255

#: Alembic's bookkeeping table; not `alembic_version`, which MLflow uses if it shares the database.
ALEMBIC_VERSION_TABLE = "job_store_alembic_version"

metadata = sa.MetaData()

_status_values = ", ".join(f"'{s.value}'" for s in JobStatus)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("idempotency_key", sa.String(512), nullable=False),
    sa.Column("dataset_id", sa.String(255), nullable=False),
    sa.Column("dataset_version", sa.Integer, nullable=False),
    sa.Column("dataset_uri", sa.Text, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("config_hash", sa.String(128), nullable=False),
    sa.Column("trigger_id", sa.String(EVENT_ID_MAX_CHARS), nullable=False),
    sa.Column("trigger_kind", sa.String(16), nullable=False),
    sa.Column("export_only", sa.Boolean, nullable=False),
    sa.Column("checkpoint_uri", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("cancel_reason", sa.Text, nullable=True),
    sa.Column("claimed_by", sa.String(255), nullable=True),
    sa.Column("lease_expires_at", UtcDateTime, nullable=True),
    sa.Column("not_before", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=True),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("error", sa.JSON, nullable=True),
    sa.CheckConstraint(f"status IN ({_status_values})", name="ck_jobs_status"),
    sa.CheckConstraint("trigger_kind IN ('auto', 'manual')", name="ck_jobs_trigger_kind"),
    sa.Index("ix_jobs_status_not_before", "status", "not_before"),
    sa.Index("ix_jobs_dataset", "dataset_id", "trigger_kind", "dataset_version"),
)

processed_events = sa.Table(
    "processed_events",
    metadata,
    sa.Column("event_id", sa.String(EVENT_ID_MAX_CHARS), primary_key=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("job_id", sa.String(36), nullable=True),
)

#: One live job per key (see LIVE); failed and cancelled ones may share it with a later job.
_live = sa.text("status IN (" + ", ".join(f"'{s.value}'" for s in JobStatus if s in LIVE) + ")")
sa.Index("uq_jobs_idempotency_key_live", jobs.c.idempotency_key, unique=True,
         postgresql_where=_live, sqlite_where=_live)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.String(EVENT_ID_MAX_CHARS), primary_key=True),
    sa.Column("routing_key", sa.String(255), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("job_id", sa.String(36), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("published_at", UtcDateTime, nullable=True),
    sa.Index("ix_outbox_published_at", "published_at"),
)


def job_from_row(row: sa.Row) -> Job:
    values = row._asdict()
    values["status"] = JobStatus(values["status"])
    return Job(**values)


def outbox_values(message: OutboxMessage, job_id: str | None, now: datetime) -> dict[str, Any]:
    body = message.body.decode("utf-8") if isinstance(message.body, bytes) else message.body
    return {
        "id": message.id,
        "routing_key": message.routing_key,
        "body": body,
        "job_id": job_id,
        "created_at": message.created_at or now,
        "published_at": None,
    }
