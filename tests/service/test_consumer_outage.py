"""A valid trigger survives a job-store outage of any length (issue 20, defect 3).

Before the intake, the consumer retried for 60 s and requeued; RabbitMQ (quorum queue, delivery
limit 5) redelivered it five times and dead-lettered it with reason `delivery_limit`, and nothing
re-drove it. Here the timings are made small, so the old path would dead-letter the trigger within
about 2-4 s; the real job store (a PostgreSQL database that refuses connections; the server keeps
running) stays away for several of those budgets, and the trigger must still become a job.
"""

from __future__ import annotations

import asyncio
import subprocess
from functools import partial

import sqlalchemy as sa

from service import consumer as consumer_module
from service import intake as intake_module
from service.jobs.store import JobStore
from service.consumer import Action
from service.topology import DATASET_EVENTS, WORK_QUEUES
from tests.support.consuming import consumer_settings, consuming, job_of, wait_until
from tests.support.broker import Vhost, dead_letters, publish
from tests.support.servers import PG_SOCKET_DIR
from tests.support.service_stack import dataset_ready

QUICK = {"TRANSIENT_RETRY_S": 0.3, "TRANSIENT_BACKOFF_S": 0.1, "REQUEUE_DELAY_S": 0.05, "STORE_AWAY_HOLD_S": 0.6}
# Store probes (0.1 s apart, so >= 8 s) the parked trigger must wait through; at these timings the old
# path (0.3 s of retries, then a requeue, six deliveries) dead-lettered it after about 2-4 s.
PROBES_WHILE_AWAY = 80


class DatabaseAway:
    """The job store's PostgreSQL database refuses connections (its sessions are ended); the
    server keeps running. `restore` (idempotent) lets connections in again; leaving the block
    always does."""

    def __init__(self, url: str):
        self.database = sa.make_url(url).database

    def __enter__(self) -> "DatabaseAway":
        self.psql(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
        self.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.database}'")
        return self

    def restore(self) -> None:
        self.psql(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')

    def __exit__(self, *exc) -> None:
        self.restore()

    @staticmethod
    def psql(sql: str) -> None:
        subprocess.run(["psql", "-h", PG_SOCKET_DIR, "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                        "-c", sql], check=True, capture_output=True, timeout=30)


def consumed_queues(vhost: Vhost) -> list[str]:
    """The queues that have a consumer, as RabbitMQ lists them."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_consumers", "-p", vhost.name, "--no-table-headers",
                             "queue_name"], check=True, capture_output=True, text=True, timeout=60).stdout
    return sorted(listed.split())


class ProbeCounter:
    """Counts the intake's probes of the store (each still a real query)."""

    def __init__(self, store: JobStore, monkeypatch):
        self.calls, self.real = 0, store.read.counts_by_status
        monkeypatch.setattr(store.read, "counts_by_status", self)

    def __call__(self):
        self.calls += 1
        return self.real()


def test_a_valid_trigger_outlives_a_job_store_outage_many_delivery_budgets_long(
        tmp_path, vhost, postgres, example_dataset, clean_env, monkeypatch):
    for name, value in QUICK.items():
        monkeypatch.setattr(consumer_module, name, value)
    monkeypatch.setattr(intake_module, "PROBE_S", 0.1)
    monkeypatch.setattr(intake_module, "PROBE_TIMEOUT_S", 2.0)
    url = postgres.create_database()
    store = JobStore(url)
    store.migrate()
    probes = ProbeCounter(store, monkeypatch)
    settings = consumer_settings(tmp_path, vhost.url(), url, example_dataset.parent)
    event = dataset_ready("nw-italy-mini", 1, f"file://{example_dataset}")

    async def scenario() -> None:
        async with consuming(settings, store) as state:
            async def given_back() -> bool:  # held while the store is away, then back in its queue
                dead = await asyncio.to_thread(dead_letters, vhost.url(), DATASET_EVENTS.dead_letter)
                assert not dead, f"dead-lettered: {[d.headers.get('x-death') for d in dead]}"
                return state.actions_on(event["id"]) == [Action.REQUEUE]

            async def probed_on(seen: int) -> bool:
                return probes.calls >= seen + PROBES_WHILE_AWAY

            async def handled() -> bool:
                return len(state.actions_on(event["id"])) > 1

            with DatabaseAway(url) as away:
                await asyncio.to_thread(publish, vhost.url(), event, "dataset.ready")
                await wait_until(given_back, "the trigger is held, then given back to its queue")
                assert not state.intake.consuming and consumed_queues(vhost) == []  # basic.cancel reached RabbitMQ
                await wait_until(partial(probed_on, probes.calls), "the intake keeps probing the store")
                assert state.actions_on(event["id"]) == [Action.REQUEUE], "redelivered while the store was away"
                assert not state.intake.consuming
                away.restore()
            job = await job_of(store, event["id"])
            assert (job.dataset_id, job.dataset_version) == ("nw-italy-mini", 1)
            await wait_until(handled, "the trigger is acknowledged")
            assert state.actions_on(event["id"]) == [Action.REQUEUE, Action.ACK]  # the outage cost one delivery
            assert state.intake.consuming and consumed_queues(vhost) == sorted(w.name for w in WORK_QUEUES)

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    assert dead_letters(vhost.url(), DATASET_EVENTS.dead_letter) == []
