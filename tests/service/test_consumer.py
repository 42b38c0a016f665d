"""The consumer against a real RabbitMQ and a real PostgreSQL 15: a valid message that PostgreSQL
cannot store (an event id over 255 characters, a NUL in an id or a reason), or a dataset.json too
large to read in `serve`, is refused at once and dead-lettered with a reason and a detail naming the
field, instead of being requeued with a traceback until RabbitMQ's delivery limit drops it with none.
"""

from __future__ import annotations

import asyncio
import json

import aio_pika
import pytest
import sqlalchemy as sa

from foundation.settings import Settings
from service.consumer import Action, Consumer
from service.jobs.store import JobStatus, JobStore
from service.jobs.tables import EVENT_ID_MAX_CHARS, processed_events
from service.topology import DATASET_EVENTS, OPS_EVENTS, DETAIL_HEADER, REASON_HEADER, WorkQueue, declare_topology
from tests.support.broker import dead_letters
from tests.support.jobs import accept
from tests.support.service_stack import dataset_ready

MIB = 1024 * 1024


@pytest.fixture
def store(postgres_url):
    store = JobStore(postgres_url)
    with store.engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE jobs, processed_events, outbox"))
    yield store
    store.close()


@pytest.fixture
def datasets(tmp_path) -> str:
    return f"file://{tmp_path / 'datasets'}"


@pytest.fixture
def settings(tmp_path, postgres_url, datasets) -> Settings:
    return Settings(state_dir=tmp_path / "state", job_store_url=postgres_url, allowed_dataset_locations=[datasets],
                    ops_allowed_users=["guest"])


def write_manifest(root, dataset_id: str, version: int, padding: int = 0) -> str:
    folder = root / dataset_id / f"v{version}"
    folder.mkdir(parents=True)
    manifest = {"dataset_id": dataset_id, "version": version, "padding": "x" * padding}
    (folder / "dataset.json").write_text(json.dumps(manifest))
    return f"file://{folder}"


def handle(settings: Settings, store: JobStore, url: str, body: dict, routing_key: str, work: WorkQueue):
    """Publish `body` as guest, take it from its work queue, hand it to the consumer: its Action,
    and the reason and detail of the dead letter it left (if any)."""

    async def main() -> Action:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            queues = await declare_topology(channel)
            await queues[work.name].purge()  # what an earlier test left (a requeued message) is not this test's
            exchange = await channel.get_exchange("heimdall.events")
            await exchange.publish(aio_pika.Message(json.dumps(body).encode(), message_id=body["id"][:255],
                                                    user_id="guest"), routing_key=routing_key, mandatory=True)
            message = await queues[work.name].get(timeout=5)
            consumer = Consumer(settings, store, channel, lambda: None, lambda job_id: None)
            return await consumer.handle(message, work)

    action = asyncio.run(asyncio.wait_for(main(), 120))
    letters = dead_letters(url, work.dead_letter)
    return action, [(d.headers[REASON_HEADER], d.headers[DETAIL_HEADER]) for d in letters]


def cancel(job_id: str, reason: str) -> dict:
    return {"specversion": "1.0", "id": "cancel-1", "source": "heimdall/ops", "type": "heimdall.training.cancel.v1",
            "time": "2026-12-01T00:00:00Z", "data": {"job_id": job_id, "reason": reason}}


@pytest.mark.parametrize("event_id, detail", [
    ("e" * (EVENT_ID_MAX_CHARS + 45), "id: 300 characters"),
    ("ev\x00il", "id: contains a NUL character"),
], ids=["id-too-long", "nul-in-id"])
def test_an_event_id_postgres_cannot_store_is_dead_lettered_naming_the_field(
        settings, store, vhost, tmp_path, event_id, detail):
    uri = write_manifest(tmp_path / "datasets", "ds-a", 1)

    action, letters = handle(settings, store, vhost.url(), dataset_ready("ds-a", 1, uri, event_id=event_id),
                             "dataset.ready", DATASET_EVENTS)

    assert action is Action.DEAD_LETTER
    assert len(letters) == 1 and letters[0][0] == "invalid-envelope" and letters[0][1].startswith(detail)
    assert store.read.list_jobs() == []
    with store.transaction(write=False) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(processed_events)).scalar() == 0


def test_an_event_id_of_the_longest_storable_length_is_accepted(settings, store, vhost, tmp_path):
    uri = write_manifest(tmp_path / "datasets", "ds-a", 1)
    event = dataset_ready("ds-a", 1, uri, event_id="e" * EVENT_ID_MAX_CHARS)

    action, letters = handle(settings, store, vhost.url(), event, "dataset.ready", DATASET_EVENTS)

    assert (action, letters) == (Action.ACK, [])
    assert [job.trigger_id for job in store.read.list_jobs()] == [event["id"]]


def test_a_nul_in_a_cancel_reason_is_dead_lettered_and_the_job_left_alone(settings, store, vhost):
    job = accept(store)

    action, letters = handle(settings, store, vhost.url(), cancel(job.id, "oops\x00"), "training.cancel", OPS_EVENTS)

    assert action is Action.DEAD_LETTER
    assert letters == [("invalid-data", "data.reason: contains a NUL character, which the job store cannot keep")]
    assert store.read.get(job.id).status is JobStatus.QUEUED


def test_a_dataset_json_over_the_limit_is_dead_lettered_unread(settings, store, vhost, tmp_path):
    uri = write_manifest(tmp_path / "datasets", "ds-big", 1, padding=settings.max_manifest_bytes)

    action, letters = handle(settings, store, vhost.url(), dataset_ready("ds-big", 1, uri), "dataset.ready",
                             DATASET_EVENTS)

    assert settings.max_manifest_bytes == 16 * MIB  # the default
    assert action is Action.DEAD_LETTER and store.read.list_jobs() == []
    assert letters == [("dataset-too-large", f"{uri}/dataset.json is larger than 16777216 bytes "
                                             f"(HEIMDALL_MAX_MANIFEST_BYTES)")]


def test_a_dataset_json_over_the_limit_on_s3_is_refused_too(settings, store, vhost, s3_server):
    prefix = "s3://heimdall-datasets/consumer-tests"
    manifest = {"dataset_id": "ds-s3", "version": 1, "padding": "x" * 2000}
    s3_server.client().put_object(Bucket="heimdall-datasets", Key="consumer-tests/ds-s3/v1/dataset.json",
                                  Body=json.dumps(manifest).encode())
    settings = settings.model_copy(update={
        "max_manifest_bytes": 1000, "allowed_dataset_locations": [prefix], "s3": s3_server.settings()})

    action, letters = handle(settings, store, vhost.url(), dataset_ready("ds-s3", 1, f"{prefix}/ds-s3/v1"),
                             "dataset.ready", DATASET_EVENTS)

    assert action is Action.DEAD_LETTER
    assert [reason for reason, _ in letters] == ["dataset-too-large"]
