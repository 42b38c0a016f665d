"""The job store of a test's own `settings` (a SQLite file under its state dir): each module that
asks for `store` here defines the `settings` fixture its tests run on."""

from __future__ import annotations

import pytest

from service.jobs.store import JobStore


@pytest.fixture
def store(settings) -> JobStore:
    store = JobStore(settings.job_store_url)
    store.migrate()
    yield store
    store.close()
