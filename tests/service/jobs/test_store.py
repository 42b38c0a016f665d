"""The job store, specified against SQLite (a temporary file) and a real PostgreSQL 15.

PostgreSQL is reached on its Unix socket with trust auth; one fresh database per test session
is created and dropped, and emptied between tests. Times are injected (`now=`), so nothing here
sleeps except the races, which several threads start together behind a barrier.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from service.jobs.events import cancelled_message, registered_message
from service.jobs.store import (
    IllegalTransition,
    JobStatus,
    JobStore,
    OutboxMessage,
    UnknownJob,
)
from foundation.train_config import job_key
from service.jobs.tables import ALEMBIC_VERSION_TABLE, jobs, metadata
from tests.support.jobs import VALID_RESULT, accept, trigger

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc)
LEASE_S = 60.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def outbox_keys(store: JobStore) -> list[tuple[str, str]]:
    return [(m.routing_key, json.loads(m.body)["data"]["job_id"]) for m in store.read.pending_messages()]


def race(threads: int, work) -> list:
    """Runs work(i) in several threads released together; returns their results."""
    barrier = threading.Barrier(threads)
    results: list = [None] * threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    if errors:
        raise errors[0]
    return results


# --- migrations -----------------------------------------------------------------------------


def test_migrate_twice_is_a_no_op(store):
    store.migrate()
    with store.engine.connect() as conn:
        versions = conn.execute(sa.text(f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}")).scalars().all()
    assert versions == ["0001"]
    assert store.accept(**trigger(now=T0)).created


def test_migrations_create_exactly_the_tables_the_store_uses(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": ALEMBIC_VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_replicas_migrating_at_once_all_succeed(backend, tmp_path, request):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database()
    stores = [JobStore(url) for _ in range(4)]
    try:
        race(4, lambda i: stores[i].migrate())
        assert stores[0].accept(**trigger(now=T0)).created
    finally:
        for s in stores:
            s.close()


# --- accepting triggers -------------------------------------------------------------------------


def test_accept_creates_one_queued_job_and_one_accepted_message(store):
    result = store.accept(**trigger(event_id="ev-1", now=T0))

    assert result.created and not result.duplicate_event and result.superseded == []
    job = result.job
    assert job.status is JobStatus.QUEUED
    assert (job.attempt, job.trigger_id, job.trigger_kind, job.claimed_by) == (0, "ev-1", "auto", None)
    assert job.idempotency_key == "nw-italy-2m/v1/c0ffee"
    assert job.config == {"epochs": 4}
    assert job.created_at == job.not_before == T0 and job.created_at.tzinfo is not None
    assert store.read.get(job.id) == job
    assert outbox_keys(store) == [("training.accepted", job.id)]


def test_the_same_event_again_is_a_duplicate_and_changes_nothing(store):
    first = store.accept(**trigger(event_id="ev-1", now=T0))
    again = store.accept(**trigger(event_id="ev-1", now=at(5)))

    assert again.duplicate_event and not again.created
    assert again.job == first.job
    assert len(store.read.list_jobs()) == 1 and len(store.read.pending_messages()) == 1


def test_another_event_for_the_same_key_maps_to_the_same_job(store):
    first = store.accept(**trigger(event_id="ev-1", now=T0))
    second = store.accept(**trigger(event_id="ev-2", trigger_kind="manual", now=T0))

    assert not second.created and not second.duplicate_event
    assert second.job.id == first.job.id
    assert store.accept(**trigger(event_id="ev-2", now=T0)).duplicate_event  # and ev-2 is now remembered
    assert len(store.read.pending_messages()) == 1


def test_the_key_is_config_job_key_and_export_and_resume_make_distinct_keys(store):
    plain = accept(store, now=T0)
    export = accept(store, trigger_kind="manual", export_only=True, checkpoint_uri="s3://ckpt/a.ckpt", now=T0)
    resume = accept(store, trigger_kind="manual", checkpoint_uri="s3://ckpt/a.ckpt", now=T0)
    other = accept(store, trigger_kind="manual", checkpoint_uri="s3://ckpt/b.ckpt", now=T0)

    assert len({plain.id, export.id, resume.id, other.id}) == 4
    assert plain.idempotency_key == job_key("nw-italy-2m", 1, "c0ffee")
    assert export.idempotency_key == job_key("nw-italy-2m", 1, "c0ffee", export_only=True, checkpoint="s3://ckpt/a.ckpt")
    assert resume.idempotency_key == job_key("nw-italy-2m", 1, "c0ffee", checkpoint="s3://ckpt/a.ckpt")
    assert "/resume-" in resume.idempotency_key and "/export-" in export.idempotency_key


def _finish(store: JobStore, job, outcome: str):
    if outcome == "cancelled":
        return store.request_cancel(job.id, "ops said so", cancelled_message, now=at(2))
    store.claim_next("w1", LEASE_S, now=at(1))
    if outcome == "failed":
        return store.finish_failed(job.id, "w1", {"stage": "train"}, now=at(2))
    return store.finish_succeeded(job.id, "w1", {"model_version": 1}, now=at(2))


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
@pytest.mark.parametrize("kind", ["auto", "manual"])
def test_a_failed_or_cancelled_job_does_not_block_a_new_one_for_its_key(store, outcome, kind):
    first = accept(store, event_id="ev-1", trigger_kind=kind, now=T0)
    assert _finish(store, first, outcome).status is JobStatus(outcome)

    again = store.accept(**trigger(event_id="ev-2", trigger_kind=kind, now=at(10)))

    assert again.created and again.job.id != first.id and again.job.status is JobStatus.QUEUED
    assert again.job.idempotency_key == first.idempotency_key
    assert store.read.get(first.id).status is JobStatus(outcome)  # the old one stays as it was
    # the replayed event id is still a duplicate, answered with its own (final) job
    replay = store.accept(**trigger(event_id="ev-1", trigger_kind=kind, now=at(11)))
    assert replay.duplicate_event and not replay.created and replay.job.id == first.id
    # a third event maps to the new live job
    third = store.accept(**trigger(event_id="ev-3", trigger_kind=kind, now=at(12)))
    assert not third.created and third.job.id == again.job.id
    assert len(store.read.list_jobs()) == 2


@pytest.mark.parametrize("state", ["running", "succeeded"])
def test_a_running_or_succeeded_job_still_holds_its_key(store, state):
    first = accept(store, event_id="ev-1", now=T0)
    if state == "succeeded":
        _finish(store, first, "succeeded")
    else:
        store.claim_next("w1", LEASE_S, now=at(1))

    again = store.accept(**trigger(event_id="ev-2", trigger_kind="manual", now=at(10)))

    assert not again.created and again.job.id == first.id and again.job.status is JobStatus(state)
    assert len(store.read.list_jobs()) == 1


def test_the_database_allows_one_live_job_per_key(store):
    """The partial unique index itself, below the store's own checks."""
    first = accept(store, event_id="ev-1", now=T0)
    row = {column.name: getattr(first, column.name) for column in jobs.c}
    row["status"] = first.status.value

    def insert(**changes) -> None:
        with store.engine.begin() as conn:
            conn.execute(sa.insert(jobs).values(row | {"id": str(uuid.uuid4())} | changes))

    with pytest.raises(sa.exc.IntegrityError):
        insert()  # a second queued job
    with pytest.raises(sa.exc.IntegrityError):
        insert(status="succeeded")
    insert(status="failed")  # any number of final failures and cancels
    insert(status="failed")
    insert(status="cancelled")
    assert len(store.read.list_jobs()) == 4


def test_replicas_retriggering_a_failed_key_at_once_make_one_new_job(store, open_store):
    first = accept(store, event_id="ev-0", trigger_kind="manual", now=T0)
    _finish(store, first, "failed")
    replicas = [open_store() for _ in range(4)]
    retriggers = [trigger(event_id=f"ev-{i + 1}", trigger_kind="manual", now=at(10)) for i in range(4)]

    results = race(4, lambda i: replicas[i].accept(**retriggers[i]))

    assert sum(result.created for result in results) == 1
    assert len({result.job.id for result in results}) == 1 and results[0].job.id != first.id
    assert len(store.read.list_jobs(JobStatus.QUEUED)) == 1


def test_known_dataset_answers_from_jobs_of_any_status(store):
    assert store.read.known_dataset("nw-italy-2m") is None
    v1 = accept(store, dataset_version=1, now=T0)
    accept(store, dataset_version=3, now=at(1))  # supersedes v1: cancelled, still known
    accept(store, dataset_version=2, trigger_kind="manual", now=at(2))
    accept(store, dataset_version=9, dataset_id="other", dataset_uri="s3://heimdall-datasets/other/v9", now=at(3))
    assert store.read.get(v1.id).status is JobStatus.CANCELLED

    assert store.read.known_dataset("nw-italy-2m") == (3, "s3://heimdall-datasets/nw-italy-2m/v3")
    assert store.read.known_dataset("nw-italy-2m", 1) == (1, "s3://heimdall-datasets/nw-italy-2m/v1")
    assert store.read.known_dataset("nw-italy-2m", 2) == (2, "s3://heimdall-datasets/nw-italy-2m/v2")
    assert store.read.known_dataset("nw-italy-2m", 4) is None
    assert store.read.known_dataset("other") == (9, "s3://heimdall-datasets/other/v9")
    assert store.read.known_dataset("nw-italy") is None  # an exact id, not a prefix


def test_a_newer_auto_version_supersedes_queued_older_ones(store):
    v1 = accept(store, dataset_version=1, now=T0)
    result = store.accept(**trigger(dataset_version=2, now=at(1)))

    assert result.created and result.job.status is JobStatus.QUEUED
    assert [job.id for job in result.superseded] == [v1.id]
    assert store.read.get(v1.id).status is JobStatus.CANCELLED
    assert store.read.get(v1.id).cancel_reason == "superseded by v2"
    # one transaction, one timestamp: the outbox does not order messages written together
    assert sorted(outbox_keys(store)) == sorted([("training.accepted", v1.id), ("training.cancelled", v1.id),
                                                 ("training.accepted", result.job.id)])


def test_a_started_older_version_is_not_superseded(store):
    v1 = accept(store, dataset_version=1, now=T0)
    store.claim_next("w1", LEASE_S, now=at(1))
    assert store.accept(**trigger(dataset_version=2, now=at(2))).superseded == []
    assert store.read.get(v1.id).status is JobStatus.RUNNING


def test_manual_triggers_neither_supersede_nor_are_superseded(store):
    auto_v2 = accept(store, dataset_version=2, now=T0)
    manual_v1 = store.accept(**trigger(dataset_version=1, trigger_kind="manual", now=at(1)))
    manual_v3 = store.accept(**trigger(dataset_version=3, trigger_kind="manual", now=at(2)))
    auto_v4 = store.accept(**trigger(dataset_version=4, now=at(3)))

    assert manual_v1.created and manual_v3.created and manual_v3.superseded == []
    assert [job.id for job in auto_v4.superseded] == [auto_v2.id]
    assert store.read.get(manual_v1.job.id).status is JobStatus.QUEUED
    assert store.read.get(manual_v3.job.id).status is JobStatus.QUEUED


def test_an_older_auto_version_arriving_late_maps_to_the_newer_queued_job(store):
    v2 = accept(store, dataset_version=2, now=T0)
    late = store.accept(**trigger(dataset_version=1, now=at(1)))

    assert not late.created and late.job.id == v2.id
    assert len(store.read.list_jobs()) == 1


def test_an_older_auto_version_arriving_after_the_newer_one_succeeded_is_not_trained(store):
    v2 = accept(store, dataset_version=2, now=T0)
    claimed = store.claim_next("w1", LEASE_S, now=at(1))
    store.finish_succeeded(v2.id, "w1", VALID_RESULT, [registered_message(claimed, VALID_RESULT)], now=at(2))
    late = store.accept(**trigger(dataset_version=1, now=at(3)))

    assert not late.created and late.job.id == v2.id
    assert len(store.read.list_jobs()) == 1


def test_min_interval_defers_auto_jobs_and_manual_ones_bypass_it(store):
    v1 = accept(store, dataset_version=1, min_interval_s=3600, now=T0)
    assert v1.not_before == T0  # nothing before it
    assert store.claim_next("w1", LEASE_S, now=at(1)).id == v1.id

    v2 = accept(store, dataset_version=2, min_interval_s=3600, now=at(10))
    assert v2.not_before == at(3600)
    assert store.claim_next("w2", LEASE_S, now=at(20)) is None
    manual = accept(store, dataset_version=2, trigger_kind="manual", config_hash="other", min_interval_s=3600,
                    now=at(30))
    assert manual.not_before == at(30)

    # a superseded job that never ran does not push the next one back
    v3 = accept(store, dataset_version=3, min_interval_s=3600, now=at(40))
    assert v3.not_before == at(3600)


# --- claiming and leases (the leases themselves: test_leases.py) --------------------------------


def test_concurrent_workers_claim_each_job_exactly_once(store, open_store):
    created = {accept(store, dataset_version=v, trigger_kind="manual", now=at(v)).id for v in range(1, 11)}
    replicas = [open_store() for _ in range(4)]

    def drain(i: int) -> list[str]:
        claimed = []
        while (job := replicas[i].claim_next(f"w{i}", LEASE_S, now=at(100))) is not None:
            claimed.append(job.id)
        return claimed

    claims = Counter(job_id for claimed in race(4, drain) for job_id in claimed)
    assert set(claims) == created and set(claims.values()) == {1}


# --- transitions --------------------------------------------------------------------------------


def test_illegal_transitions_raise(store):
    job = accept(store, now=T0)
    with pytest.raises(IllegalTransition) as raised:
        store.finish_succeeded(job.id, "w1", {}, now=at(1))
    assert (raised.value.from_status, raised.value.to_status) == (JobStatus.QUEUED, JobStatus.SUCCEEDED)
    with pytest.raises(IllegalTransition):
        store.requeue(job.id, "w1", not_before=at(1))
    with pytest.raises(UnknownJob):
        store.finish_failed("no-such-job", "w1", {})

    store.claim_next("w1", LEASE_S, now=at(1))
    done = store.finish_failed(job.id, "w1", {"stage": "train"}, now=at(2))
    assert (done.status, done.finished_at, done.error) == (JobStatus.FAILED, at(2), {"stage": "train"})
    assert store.claim_next("w2", LEASE_S, now=at(1000)) is None  # terminal jobs are never claimed
    with pytest.raises(IllegalTransition):
        store.finish_cancelled(job.id, "w1", "too late", now=at(3))


def test_finishing_writes_its_messages_in_the_same_transaction(store):
    job = accept(store, now=T0)
    store.mark_published([m.id for m in store.read.pending_messages()])
    store.claim_next("w1", LEASE_S, now=at(1))
    registered = OutboxMessage(id="ev-registered", routing_key="model.registered", body='{"job_id": "%s"}' % job.id)

    done = store.finish_succeeded(job.id, "w1", {"model_version": 3}, [registered], now=at(2))

    assert (done.status, done.result, done.lease_expires_at) == (JobStatus.SUCCEEDED, {"model_version": 3}, None)
    assert store.read.pending_messages() == [OutboxMessage("ev-registered", "model.registered", registered.body, at(2))]
    assert store.read.last_success_at() == at(2)


def test_cancelling_a_queued_job_cancels_it_at_once(store):
    job = accept(store, now=T0)
    cancelled = store.request_cancel(job.id, "ops said so", cancelled_message, now=at(1))

    assert (cancelled.status, cancelled.cancel_reason, cancelled.finished_at) == (JobStatus.CANCELLED, "ops said so", at(1))
    assert outbox_keys(store)[-1] == ("training.cancelled", job.id)
    assert store.request_cancel(job.id, "again", cancelled_message, now=at(2)) == cancelled  # terminal: unchanged
    assert store.request_cancel("no-such-job", "x", cancelled_message) is None


def test_cancelling_a_running_job_asks_its_worker_to_stop(store):
    job = accept(store, now=T0)
    store.claim_next("w1", LEASE_S, now=at(1))

    flagged = store.request_cancel(job.id, "ops said so", cancelled_message, now=at(2))

    assert (flagged.status, flagged.cancel_requested, flagged.cancel_reason) == (JobStatus.RUNNING, True, "ops said so")
    assert [key for key, _ in outbox_keys(store)] == ["training.accepted"]  # the worker publishes it
    done = store.finish_cancelled(job.id, "w1", "ops said so", [cancelled_message(flagged, "ops said so")], now=at(3))
    assert done.status is JobStatus.CANCELLED
    assert outbox_keys(store)[-1] == ("training.cancelled", job.id)


def test_requeue_releases_the_claim_until_not_before(store):
    job = accept(store, now=T0)
    store.claim_next("w1", LEASE_S, now=at(0))

    queued = store.requeue(job.id, "w1", not_before=at(300), error={"retryable": True}, now=at(10))

    assert (queued.status, queued.claimed_by, queued.not_before) == (JobStatus.QUEUED, None, at(300))
    assert queued.error == {"retryable": True} and queued.finished_at is None
    assert store.claim_next("w2", LEASE_S, now=at(299)) is None
    retried = store.claim_next("w2", LEASE_S, now=at(300))
    assert (retried.attempt, retried.started_at) == (2, T0)


# --- outbox and gauges --------------------------------------------------------------------------


def test_outbox_hands_out_unpublished_messages_oldest_first(store):
    job = accept(store, now=T0)
    started = OutboxMessage(id="ev-started", routing_key="training.started", body=b'{"job_id": "x"}',
                            created_at=at(5))
    store.add_messages([started], job_id=job.id)

    pending = store.read.pending_messages()
    assert [m.routing_key for m in pending] == ["training.accepted", "training.started"]
    assert pending[1].body == '{"job_id": "x"}' and pending[1].created_at == at(5)
    assert [m.id for m in store.read.pending_messages(limit=1)] == [pending[0].id]

    store.mark_published([pending[0].id], now=at(6))
    assert store.read.pending_messages() == [pending[1]]
    store.mark_published(["ev-started"])
    assert store.read.pending_messages() == []


def test_gauges_and_listing(store):
    assert store.read.oldest_queued_age_s(T0) is None and store.read.last_success_at() is None
    a = accept(store, dataset_version=1, trigger_kind="manual", now=T0)
    b = accept(store, dataset_version=2, trigger_kind="manual", now=at(10))
    store.claim_next("w1", LEASE_S, now=at(20))

    assert store.read.counts_by_status() == {"queued": 1, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert store.read.oldest_queued_age_s(at(40)) == 30.0
    assert [job.id for job in store.read.list_jobs()] == [b.id, a.id]
    assert [job.id for job in store.read.list_jobs(JobStatus.RUNNING)] == [a.id]
    assert [job.id for job in store.read.list_jobs(limit=1)] == [b.id]


# --- races and outages --------------------------------------------------------------------------


@pytest.mark.parametrize("same_event", [False, True], ids=["distinct-events", "same-event"])
def test_replicas_accepting_the_same_key_at_once_make_one_job(store, open_store, same_event):
    replicas = [open_store() for _ in range(4)]
    results = race(4, lambda i: replicas[i].accept(**trigger(event_id="ev-0" if same_event else f"ev-{i}", now=T0)))

    assert sum(result.created for result in results) == 1
    assert len({result.job.id for result in results}) == 1
    assert len(store.read.list_jobs()) == 1 and len(store.read.pending_messages()) == 1


def test_replicas_accepting_newer_versions_at_once_leave_one_queued_auto_job(store, open_store):
    replicas = [open_store() for _ in range(4)]
    race(4, lambda i: replicas[i].accept(**trigger(dataset_version=i + 1, now=at(i))))
    # arrival order decides which survive, but never two queued auto versions of one dataset
    assert len(store.read.list_jobs(JobStatus.QUEUED)) == 1


def test_naive_times_are_refused(store):
    with pytest.raises(Exception, match="naive"):
        accept(store, now=datetime(2026, 1, 1))
