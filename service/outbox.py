"""The outbox relay: publishes what the job store decided, with confirms, until it is confirmed.

Events are written to the outbox in the same transaction as the state change that caused them,
so an event decided while the broker was away is published when it comes back, with the same
id. Delivery is at least once (two replicas may both relay a row); consumers dedupe by id.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aio_pika
from aio_pika.abc import AbstractExchange

from service.job_store import JobStore, JobStoreUnavailable, OutboxMessage
from service.topology import event_message

log = logging.getLogger(__name__)
IDLE_POLL_S = 1.0
RETRY_S = 2.0


def amqp_message(row: OutboxMessage) -> aio_pika.Message:
    body = row.body.encode() if isinstance(row.body, str) else row.body
    return event_message(body, message_id=row.id, event_type=json.loads(body)["type"])


class OutboxRelay:
    def __init__(self, store: JobStore, exchange: AbstractExchange):
        self.store, self.exchange = store, exchange
        self.wake = asyncio.Event()
        self.healthy = True

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        while True:
            self.wake.clear()
            try:
                published = await self.relay_once()
                self.healthy = True
            except (JobStoreUnavailable, aio_pika.exceptions.AMQPError, ConnectionError, asyncio.TimeoutError) as exc:
                self.healthy = False
                log.warning("outbox relay waiting: %s", exc)
                await asyncio.sleep(RETRY_S)
                continue
            if not published:
                try:
                    await asyncio.wait_for(self.wake.wait(), IDLE_POLL_S)
                except asyncio.TimeoutError:
                    pass

    async def relay_once(self) -> int:
        rows = await asyncio.to_thread(self.store.pending_messages, 100)
        for row in rows:
            # publisher confirms are on: this returns once the broker has taken responsibility
            await self.exchange.publish(amqp_message(row), routing_key=row.routing_key, mandatory=True, timeout=30)
            await asyncio.to_thread(self.store.mark_published, [row.id])
            log.info("published", extra={"fields": {"event": "published", "event_id": row.id,
                                                    "routing_key": row.routing_key}})
        return len(rows)
