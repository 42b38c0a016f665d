"""The outbox relay against a real RabbitMQ: a broker that refuses one event (a nack from a
downstream queue at its length limit with `reject-publish`) holds up nothing behind it, and the
refused event is kept and published once the queue has room: no event is lost."""

from __future__ import annotations

import asyncio
import json
import logging

import aio_pika
import pytest

from messages import TrainingCancelled, TrainingStarted, make_event
from service.jobs.events import outbox
from service.jobs.store import JobStore
from service.metrics import ServiceMetrics
from service.outbox import PARK_AFTER_TRIES, OutboxRelay
from service.topology import declare_exchange


@pytest.fixture
def store(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path}/jobs.db")
    store.migrate()
    yield store
    store.close()


def started(job_id: str):
    return outbox(make_event(TrainingStarted(job_id=job_id, attempt=1, mlflow_run_id=None)))


def cancelled(job_id: str):
    return outbox(make_event(TrainingCancelled(job_id=job_id, reason="ops said so")))


async def full_queue(channel, exchange, routing_key: str) -> aio_pika.abc.AbstractQueue:
    """A consumer's queue bound to `routing_key`, at its length limit: the broker nacks what it is sent."""
    queue = await channel.declare_queue("", exclusive=True, arguments={"x-max-length": 1,
                                                                        "x-overflow": "reject-publish"})
    await queue.bind(exchange, routing_key)
    await exchange.publish(aio_pika.Message(b"{}"), routing_key=routing_key)  # fills it
    return queue


def test_a_nacked_event_does_not_block_the_events_behind_it_and_is_published_later(store, vhost, caplog):
    blocked, behind = cancelled("job-full"), started("job-free")
    store.add_messages([blocked, behind])
    metrics = ServiceMetrics()

    async def main():
        connection = await aio_pika.connect(vhost.url())
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await declare_exchange(channel)
            full = await full_queue(channel, exchange, "training.cancelled")
            free = await channel.declare_queue("", exclusive=True)
            await free.bind(exchange, "training.started")
            relay = OutboxRelay(store, exchange, metrics)

            assert await relay.relay_once() == 1  # the nacked row is skipped, the one behind it goes out
            assert [row.id for row in store.read.pending_messages()] == [blocked.id]  # kept, not lost
            delivered = await free.get(timeout=5, fail=False)
            assert delivered is not None and delivered.message_id == behind.id
            assert await relay.relay_once() == 0  # backing off: not retried at once

            await full.purge()  # the downstream consumer caught up
            relay.returned.clear()  # the backoff has passed
            assert await relay.relay_once() == 1
            assert store.read.pending_messages() == []
            return await full.get(timeout=5, fail=False)

    with caplog.at_level(logging.INFO, logger="service.outbox"):
        late = asyncio.run(asyncio.wait_for(main(), 60))
    assert late is not None and late.message_id == blocked.id
    assert 'heimdall_training_outbox_nacked_total{routing_key="training.cancelled"} 1.0' in metrics.render().decode()
    nacked = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "nacked"]
    assert nacked and nacked[0].fields["event_id"] == blocked.id


def test_an_event_nacked_again_and_again_is_parked_loudly_and_still_kept(store, vhost, caplog):
    row = started("job-parked")
    store.add_messages([row])
    metrics = ServiceMetrics()

    async def main():
        connection = await aio_pika.connect(vhost.url())
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await declare_exchange(channel)
            await full_queue(channel, exchange, "training.started")
            relay = OutboxRelay(store, exchange, metrics)
            for _ in range(PARK_AFTER_TRIES):
                relay.returned = {key: (tries, 0.0) for key, (tries, _) in relay.returned.items()}  # backoff over
                assert await relay.relay_once() == 0
            return relay

    with caplog.at_level(logging.INFO, logger="service.outbox"):
        relay = asyncio.run(asyncio.wait_for(main(), 60))
    parked = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "outbox row parked"]
    assert len(parked) == 1 and parked[0].levelno == logging.ERROR and parked[0].fields["event_id"] == row.id
    assert relay.returned[row.id][0] == PARK_AFTER_TRIES
    assert [m.id for m in store.read.pending_messages()] == [row.id]  # parked, never dropped
    assert "heimdall_training_outbox_parked 1.0" in metrics.render().decode()
    assert json.loads(store.read.pending_messages()[0].body)["data"]["job_id"] == "job-parked"
