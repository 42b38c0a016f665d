"""Every job-store call has a deadline: a PostgreSQL that accepts connections and never answers, or
a statement stuck behind another session's lock, ends in a retryable `JobStoreUnavailable` within
`timeout_s` instead of holding a thread for ever, and the store answers again once the database does.

Against the real PostgreSQL 15, reached through a TCP front that can stall (`StallingProxy`) or
directly with a lock held by another session."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from service.jobs.store import JobStore, JobStoreUnavailable

TIMEOUT_S = 1.0
GRACE_S = 5.0  # what a loaded test machine may add to the deadline


@pytest.fixture
def database(postgres_url) -> str:
    return sa.make_url(postgres_url).database


def outcome_within(seconds: float, call):
    """What `call()` returned or raised, as long as it did so within `seconds`."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the store was still waiting after {seconds:.0f} s (deadline {TIMEOUT_S} s)")
    return result, time.monotonic() - started


def assert_unavailable(result: dict) -> None:
    error = result.get("error")
    assert isinstance(error, JobStoreUnavailable) and error.retryable, result


def test_a_database_that_accepts_connections_and_never_answers_is_unavailable_at_the_deadline(proxy, database):
    proxy.stall()
    store = JobStore(proxy.url(database), timeout_s=TIMEOUT_S)
    try:
        result, _ = outcome_within(TIMEOUT_S + GRACE_S, lambda: store.read.get("any"))
    finally:
        store.close()
    assert_unavailable(result)


def test_a_connection_that_stops_answering_mid_use_is_dropped_and_the_store_recovers(proxy, database):
    store = JobStore(proxy.url(database), timeout_s=TIMEOUT_S)
    try:
        assert store.read.get("any") is None  # a pooled connection through the proxy
        proxy.stall()
        result, _ = outcome_within(TIMEOUT_S + GRACE_S, lambda: store.read.counts_by_status())
        assert_unavailable(result)
        proxy.resume()
        result, _ = outcome_within(TIMEOUT_S + GRACE_S, lambda: store.read.get("any"))
        assert result == {"value": None}  # a fresh connection: the frozen one was thrown away
    finally:
        store.close()


def test_a_statement_stuck_behind_another_sessions_lock_ends_at_the_deadline(postgres_url):
    holder = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    store = JobStore(postgres_url, timeout_s=TIMEOUT_S)
    try:
        with holder.connect() as conn, conn.begin():
            conn.execute(sa.text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            result, took_s = outcome_within(TIMEOUT_S + GRACE_S, lambda: store.read.list_jobs())
        assert_unavailable(result)
        assert took_s >= TIMEOUT_S * 0.9  # it waited its deadline, no less
        result, _ = outcome_within(TIMEOUT_S + GRACE_S, lambda: store.read.list_jobs())
        assert "value" in result, result  # the lock is gone: the same store answers again
    finally:
        store.close()
        holder.dispose()
