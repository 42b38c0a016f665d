"""Leases are kept by the database's clock, never by a replica's: a replica whose clock is ahead
(a skew, an NTP step) cannot steal a running job, nor fail a healthy one on its last attempt as
`WorkerLost`; one whose clock is behind cannot keep a dead worker's job for ever.

Runs on SQLite and on a real PostgreSQL 15. Each replica's own clock is injected (`now=`). The
database's clock cannot be wound on, so a test that needs a lease to run out moves the lease back
instead (`lease_runs_out`): the same as that much time passing on the database's clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from service.jobs.events import cancelled_message
from service.jobs.store import JobStatus, JobStore, LostClaim, OutboxMessage, utcnow
from service.jobs.tables import jobs
from tests.support.jobs import accept

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc)
LEASE_S = 60.0
HOUR = timedelta(hours=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def database_time(store: JobStore) -> datetime:
    with store.transaction(write=False) as conn:
        return store.db.clock(conn)


def lease_runs_out(store: JobStore, job_id: str, seconds: float = LEASE_S + 1) -> None:
    """As if `seconds` passed on the database's clock for this job's lease."""
    with store.transaction(write=True) as conn:
        lease = conn.execute(sa.select(jobs.c.lease_expires_at).where(jobs.c.id == job_id)).scalar_one()
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id)
                     .values(lease_expires_at=lease - timedelta(seconds=seconds)))


def abandoned(job) -> OutboxMessage:
    return OutboxMessage(id=f"abandoned-{job.id}", routing_key="training.failed", body="{}")


# --- skewed replicas ------------------------------------------------------------------------------


def test_a_replica_whose_clock_is_ahead_does_not_steal_a_running_job(store):
    job = accept(store)
    store.claim_next("w1", LEASE_S)
    ahead = utcnow() + timedelta(seconds=LEASE_S) + HOUR

    assert store.claim_next("w2", LEASE_S, now=ahead) is None
    # nor, on the job's last attempt, fail it as WorkerLost while w1 is alive and renewing
    assert store.claim_next("w2", LEASE_S, now=ahead, max_attempts=1, abandoned_message=abandoned) is None
    held = store.read.get(job.id)
    assert (held.status, held.claimed_by, held.attempt, held.error) == (JobStatus.RUNNING, "w1", 1, None)
    assert [m.routing_key for m in store.read.pending_messages()] == ["training.accepted"]


def test_a_worker_whose_clock_is_behind_keeps_the_lease_it_renews(store):
    behind = utcnow() - HOUR
    job = accept(store, now=behind)
    store.claim_next("w1", LEASE_S, now=behind)
    assert store.renew_lease(job.id, "w1", LEASE_S, now=behind) is True

    assert store.claim_next("w2", LEASE_S) is None  # an honest clock sees a lease that is still running
    assert store.read.get(job.id).claimed_by == "w1"


def test_an_expired_lease_is_reclaimed_even_by_a_replica_whose_clock_is_behind(store):
    job = accept(store)
    store.claim_next("w1", LEASE_S)
    lease_runs_out(store, job.id)

    reclaimed = store.claim_next("w2", LEASE_S, now=utcnow() - HOUR)

    assert (reclaimed.id, reclaimed.claimed_by, reclaimed.attempt) == (job.id, "w2", 2)


def test_a_lease_ends_lease_s_after_the_claim_or_renewal_on_the_databases_clock(store):
    job = accept(store)
    before = database_time(store)
    claimed = store.claim_next("w1", LEASE_S, now=utcnow() + 7 * HOUR)  # the replica's clock plays no part
    after = database_time(store)
    assert before <= claimed.lease_expires_at - timedelta(seconds=LEASE_S) <= after

    before = database_time(store)
    assert store.renew_lease(job.id, "w1", 2 * LEASE_S, now=utcnow() - 7 * HOUR)
    after = database_time(store)
    assert before <= store.read.get(job.id).lease_expires_at - timedelta(seconds=2 * LEASE_S) <= after


# --- claiming and leases (moved here from test_store.py when leases moved to the database's clock) --


def test_claim_takes_the_oldest_due_job_and_starts_a_run(store):
    first = accept(store, dataset_version=1, trigger_kind="manual", now=T0)
    accept(store, dataset_version=2, trigger_kind="manual", now=at(1))

    before = database_time(store)
    job = store.claim_next("w1", LEASE_S, now=at(5))

    assert job.id == first.id and job.status is JobStatus.RUNNING
    assert (job.claimed_by, job.attempt, job.started_at) == ("w1", 1, at(5))
    assert before <= job.lease_expires_at - timedelta(seconds=LEASE_S) <= database_time(store)


def test_an_expired_lease_is_reclaimed_and_the_old_worker_has_lost_it(store):
    job = accept(store, now=T0)
    store.claim_next("w1", LEASE_S, now=at(0))
    assert store.claim_next("w2", LEASE_S, now=at(59)) is None
    lease_runs_out(store, job.id)

    reclaimed = store.claim_next("w2", LEASE_S, now=at(61))

    assert (reclaimed.id, reclaimed.claimed_by, reclaimed.attempt, reclaimed.started_at) == (job.id, "w2", 2, T0)
    assert store.renew_lease(job.id, "w1", LEASE_S, now=at(62)) is False
    with pytest.raises(LostClaim):
        store.finish_succeeded(job.id, "w1", {"model_version": 1}, now=at(63))
    with pytest.raises(LostClaim):
        store.requeue(job.id, "w1", not_before=at(63), now=at(63))
    assert store.finish_succeeded(job.id, "w2", {"model_version": 1}, now=at(64)).status is JobStatus.SUCCEEDED


def test_renewing_a_lease_keeps_the_job(store):
    job = accept(store, now=T0)
    store.claim_next("w1", LEASE_S, now=at(0))
    lease_runs_out(store, job.id, seconds=50)

    before = database_time(store)
    assert store.renew_lease(job.id, "w1", LEASE_S, now=at(50)) is True
    lease_runs_out(store, job.id, seconds=11)  # 61 s after the claim, 11 s after the renewal
    assert store.claim_next("w2", LEASE_S, now=at(61)) is None
    assert store.read.get(job.id).lease_expires_at >= before + timedelta(seconds=LEASE_S - 11)


def test_a_cancel_request_survives_the_worker_dying(store):
    job = accept(store, now=T0)
    store.claim_next("w1", LEASE_S, now=at(0))
    store.request_cancel(job.id, "stop", cancelled_message, now=at(1))
    lease_runs_out(store, job.id)

    reclaimed = store.claim_next("w2", LEASE_S, now=at(100))
    assert reclaimed.id == job.id and reclaimed.cancel_requested  # w2 must finish it cancelled
