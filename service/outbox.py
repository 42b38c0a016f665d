"""The outbox relay: publishes what the job store decided, with confirms, until it is confirmed.

Events are written to the outbox in the same transaction as the state change that caused them,
so an event decided while the broker was away is published when it comes back, with the same
id. Delivery is at least once (two replicas may both relay a row); consumers dedupe by id.
Every publish is `mandatory` on a channel with `on_return_raises`. An event the broker does not take
is kept in the outbox, retried with backoff, counted, and does not hold up the events behind it:
one returned because no queue is bound for it (the inference service has not declared its queue
yet), or nacked (a downstream queue at its length limit with `reject-publish`). After
PARK_AFTER_TRIES refusals it is parked: logged once as an error, counted in the parked gauge, and
still retried every REFUSED_BACKOFF_MAX_S, so that nothing is ever dropped.
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
REFUSED_BACKOFF_S, REFUSED_BACKOFF_MAX_S = 2.0, 300.0  # a returned or nacked row: first delay, then doubling
PARK_AFTER_TRIES = 8  # about 8 minutes of refusals: an operator has to look (full queue, missing binding)


def amqp_message(row: OutboxMessage) -> aio_pika.Message:
    body = row.body.encode() if isinstance(row.body, str) else row.body
    return event_message(body, message_id=row.id, event_type=json.loads(body)["type"])


class OutboxRelay:
    def __init__(self, store: JobStore, exchange: AbstractExchange, metrics: ServiceMetrics):
        self.store, self.exchange, self.metrics = store, exchange, metrics
        self.wake = asyncio.Event()
        self.healthy = True
        self.returned: dict[str, tuple[int, float]] = {}  # refused (returned or nacked) row id -> (tries, next try at)

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
        if self.returned:  # forget refused rows that another replica has published meanwhile
            unpublished = await asyncio.to_thread(self.store.read.unpublished, list(self.returned))
            self.returned = {row_id: value for row_id, value in self.returned.items() if row_id in unpublished}
        now = time.monotonic()
        waiting = [row_id for row_id, (_, due) in self.returned.items() if due > now]
        rows = await asyncio.to_thread(self.store.read.pending_messages, 100, exclude=waiting)
        published = 0
        for row in rows:
            try:
                # publisher confirms are on: this returns once the broker has taken responsibility
                await asyncio.wait_for(self.exchange.publish(amqp_message(row), routing_key=row.routing_key,
                                                             mandatory=True), PUBLISH_TIMEOUT_S)
            except aio_pika.exceptions.DeliveryError as exc:  # returned (PublishError) or nacked
                self.refused(row, exc)
                continue
            await asyncio.to_thread(self.store.mark_published, [row.id])
            self.returned.pop(row.id, None)
            published += 1
            log.info("published", extra={"fields": {"event": "published", "event_id": row.id,
                                                    "routing_key": row.routing_key}})
        self.metrics.outbox_parked.set(sum(tries >= PARK_AFTER_TRIES for tries, _ in self.returned.values()))
        return published

    def refused(self, row: OutboxMessage, error: aio_pika.exceptions.DeliveryError) -> None:
        """Keep the row and try it again later, without holding up the rows behind it."""
        tries = self.returned.get(row.id, (0, 0.0))[0] + 1
        delay = min(REFUSED_BACKOFF_S * 2 ** (tries - 1), REFUSED_BACKOFF_MAX_S)
        self.returned[row.id] = (tries, time.monotonic() + delay)
        returned = isinstance(error, aio_pika.exceptions.PublishError)
        (self.metrics.unroutable if returned else self.metrics.nacked).labels(routing_key=row.routing_key).inc()
        fields = {"event_id": row.id, "routing_key": row.routing_key, "tries": tries, "retry_in_s": delay}
        if returned:
            log.warning("unroutable: no queue is bound; kept in the outbox", extra={"fields": {
                "event": "unroutable", **fields}})
        else:
            log.warning("nacked by the broker (a queue at its length limit?); kept in the outbox", extra={
                "fields": {"event": "nacked", **fields}})
        if tries == PARK_AFTER_TRIES:
            log.error("outbox row parked: refused %d times; still kept and retried every %.0f s", tries,
                      REFUSED_BACKOFF_MAX_S, extra={"fields": {"event": "outbox row parked", **fields}})
