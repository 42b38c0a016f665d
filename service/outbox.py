"""The outbox relay: publishes what the job store decided, with confirms, until it is confirmed.

Events are written to the outbox in the same transaction as the state change that caused them,
so an event decided while the broker was away is published when it comes back, with the same
id. Delivery is at least once (two replicas may both relay a row); consumers dedupe by id.
Every publish is `mandatory` on a channel with `on_return_raises`: an event no queue is bound for
(the inference service has not declared its queue yet) is returned, stays in the outbox, is
retried with backoff and counted, and does not hold up the events behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aio_pika
from aio_pika.abc import AbstractExchange

from service.jobs.store import JobStore, OutboxMessage
from service.metrics import ServiceMetrics
from service.topology import event_message

log = logging.getLogger(__name__)
RELAY_IDLE_S = 1.0  # how long an idle relay waits for a notify before it looks at the outbox again
RETRY_S = 2.0
PUBLISH_TIMEOUT_S = 30.0
UNROUTABLE_BACKOFF_S, UNROUTABLE_BACKOFF_MAX_S = 2.0, 300.0


def amqp_message(row: OutboxMessage) -> aio_pika.Message:
    body = row.body.encode() if isinstance(row.body, str) else row.body
    return event_message(body, message_id=row.id, event_type=json.loads(body)["type"])


class OutboxRelay:
    def __init__(self, store: JobStore, exchange: AbstractExchange, metrics: ServiceMetrics):
        self.store, self.exchange, self.metrics = store, exchange, metrics
        self.wake = asyncio.Event()
        self.healthy = True
        self.returned: dict[str, tuple[int, float]] = {}  # unroutable row id -> (tries, next try at)

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        while True:
            self.wake.clear()
            try:
                published = await self.relay_once()
                self.healthy = True
            except Exception as exc:  # the store or the broker away (a reconnecting channel raises RuntimeError)
                self.healthy = False
                log.warning("outbox relay waiting: %s: %s", type(exc).__name__, exc,
                            extra={"fields": {"event": "outbox waiting"}})
                await asyncio.sleep(RETRY_S)
                continue
            if not published:
                try:
                    await asyncio.wait_for(self.wake.wait(), RELAY_IDLE_S)
                except asyncio.TimeoutError:
                    pass

    async def relay_once(self) -> int:
        now = time.monotonic()
        waiting = [row_id for row_id, (_, due) in self.returned.items() if due > now]
        rows = await asyncio.to_thread(self.store.read.pending_messages, 100, exclude=waiting)
        published = 0
        for row in rows:
            try:
                # publisher confirms are on: this returns once the broker has taken responsibility
                await asyncio.wait_for(self.exchange.publish(amqp_message(row), routing_key=row.routing_key,
                                                             mandatory=True), PUBLISH_TIMEOUT_S)
            except aio_pika.exceptions.PublishError:
                self.unroutable(row)
                continue
            await asyncio.to_thread(self.store.mark_published, [row.id])
            self.returned.pop(row.id, None)
            published += 1
            log.info("published", extra={"fields": {"event": "published", "event_id": row.id,
                                                    "routing_key": row.routing_key}})
        return published

    def unroutable(self, row: OutboxMessage) -> None:
        tries = self.returned.get(row.id, (0, 0.0))[0] + 1
        delay = min(UNROUTABLE_BACKOFF_S * 2 ** (tries - 1), UNROUTABLE_BACKOFF_MAX_S)
        self.returned[row.id] = (tries, time.monotonic() + delay)
        self.metrics.unroutable.labels(routing_key=row.routing_key).inc()
        log.warning("unroutable: no queue is bound; kept in the outbox", extra={"fields": {
            "event": "unroutable", "event_id": row.id, "routing_key": row.routing_key, "tries": tries,
            "retry_in_s": delay}})
