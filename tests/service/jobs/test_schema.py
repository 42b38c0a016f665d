"""What the job store's errors say a caller must do: a database that cannot be reached, or does not
answer in time, is retryable; one that answers without the job store's tables (never migrated, a
mistyped URL, the wrong database) is not, since no retry can fix it. SQLite and a real PostgreSQL 15."""

from __future__ import annotations

import sqlite3

import pytest

from service.jobs.store import JobStore, JobStoreUnavailable, NoJobStore, OutboxMessage


def test_an_unreachable_database_is_a_retryable_error(tmp_path):
    """(Moved from test_store.py, whose SQLite half really met "no such table".) SQLite: the write lock
    held by another process for longer than the deadline; PostgreSQL: no server at that address."""
    path = tmp_path / "jobs.db"
    store = JobStore(f"sqlite:///{path}", timeout_s=0.3)
    store.migrate()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(JobStoreUnavailable) as raised:
            store.add_messages([OutboxMessage(id="e1", routing_key="training.started", body="{}")])
        assert raised.value.retryable and "locked" in raised.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()
    store = JobStore(f"postgresql+psycopg2://postgres@/heimdall_absent?host={tmp_path}", timeout_s=2)
    with pytest.raises(JobStoreUnavailable) as raised:
        store.read.get("any")
    assert raised.value.retryable
    store.close()


def test_a_database_without_the_job_store_tables_is_not_retryable(tmp_path, postgres):
    sqlite3.connect(tmp_path / "jobs.db").close()  # an empty SQLite file: "no such table"
    for url in (f"sqlite:///{tmp_path / 'jobs.db'}", postgres.create_database()):  # PostgreSQL: UndefinedTable
        store = JobStore(url)
        with pytest.raises(NoJobStore) as raised:
            store.read.get("any")
        assert not raised.value.retryable and "never migrated" in raised.value.message
        store.close()
