"""Fixtures of the service's tests: the job store of a test's own `settings` (a SQLite file under
its state dir: each module that asks for `store` here defines the `settings` fixture its tests run
on), one migrated PostgreSQL database for the modules that empty it in their own `store`, a RabbitMQ
vhost of the test's own, and a TCP proxy that can stall the job store's database."""

from __future__ import annotations

import pytest

from service.jobs.store import JobStore
from tests.support.broker import Vhost
from tests.support.stalling_proxy import StallingProxy


@pytest.fixture(scope="session")
def postgres_url(postgres) -> str:
    """One database per session, migrated once; the modules using it empty it before each test."""
    url = postgres.create_database()
    store = JobStore(url)
    store.migrate()
    store.close()
    return url


@pytest.fixture
def store(settings) -> JobStore:
    store = JobStore(settings.job_store_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def vhost():
    vhost = Vhost()
    yield vhost
    vhost.close()


@pytest.fixture
def proxy():
    proxy = StallingProxy()
    yield proxy
    proxy.close()
