"""Job stores for the store's own tests and the views built on it: every test runs twice, on a
SQLite file and on a real PostgreSQL 15 (`postgres_url`, tests/service/conftest.py: one database
per session, emptied before each test)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service.jobs.store import JobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_url(backend, request, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def open_store(store_url):
    """Opens stores on this test's database (one per simulated replica) and closes them all."""
    opened: list[JobStore] = []

    def _open() -> JobStore:
        store = JobStore(store_url)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store, backend) -> JobStore:
    store = open_store()
    store.migrate()
    if backend == "postgresql":
        with store.engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE jobs, processed_events, outbox"))
    return store
