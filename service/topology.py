"""The service's RabbitMQ topology: every queue, exchange and routing-key name, declared idempotently.

Each work queue is a durable quorum queue with a delivery limit (a poison message that keeps
crashing the handler is dead-lettered by RabbitMQ itself, reason `delivery_limit`) and its own
dead-letter queue, declared together by one helper. Messages the service refuses on purpose are
re-published to the dead-letter queue with the reason in their headers, then acknowledged. A
direct exchange binds each work queue under its own routing keys, so a re-driven dead letter
(`service.dead_letters`) reaches the queue it came from, under its original key, and no other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from messages import constants as wire

DEAD_LETTER_EXCHANGE = "heimdall.training.dead-letter"
REDRIVE_EXCHANGE = "heimdall.training.redrive"
DELIVERY_LIMIT = 5  # redeliveries of one message before RabbitMQ dead-letters it
REASON_HEADER, DETAIL_HEADER = "x-heimdall-reason", "x-heimdall-detail"
DEAD_LETTERED_AT_HEADER = "x-heimdall-dead-lettered-at"  # ISO 8601, UTC
REDRIVES_HEADER = "x-heimdall-redrives"  # how often an operator re-drove this message from a dead-letter queue
ORIGINAL_ROUTING_KEY_HEADER, ORIGINAL_USER_HEADER = "x-original-routing-key", "x-original-user-id"


@dataclass(frozen=True)
class WorkQueue:
    name: str
    routing_keys: tuple[str, ...]

    @property
    def dead_letter(self) -> str:
        return f"{self.name}.dead-letter"


# Automatic triggers and ops messages are separate queues, so a flood of one never delays the other.
DATASET_EVENTS = WorkQueue("heimdall.training.datasets", (wire.DATASET_READY,))
OPS_EVENTS = WorkQueue("heimdall.training.ops", (wire.TRAINING_REQUESTED, wire.TRAINING_CANCEL, wire.MODEL_PROMOTE))
WORK_QUEUES = (DATASET_EVENTS, OPS_EVENTS)


def event_message(body: bytes, *, message_id: str | None, event_type: str | None, timestamp: datetime | None = None,
                  **properties) -> aio_pika.Message:
    """An AMQP message with the properties `events.md` fixes: persistent, JSON, id, type, time."""
    return aio_pika.Message(body=body, message_id=message_id, type=event_type, content_type=wire.CONTENT_TYPE,
                            timestamp=timestamp or datetime.now(timezone.utc),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, app_id="heimdall-training", **properties)


async def declare_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(wire.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare_topology(channel: AbstractChannel) -> dict[str, aio_pika.abc.AbstractQueue]:
    """Declare (or confirm) everything; returns the work queues by name."""
    exchange = await declare_exchange(channel)
    dlx = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    redrive = await channel.declare_exchange(REDRIVE_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    queues = {}
    for work in WORK_QUEUES:
        dead = await channel.declare_queue(work.dead_letter, durable=True, arguments={"x-queue-type": "quorum"})
        await dead.bind(dlx, routing_key=work.name)
        queue = await channel.declare_queue(work.name, durable=True, arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": work.name,
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # at-least-once dead-lettering requires it
        })
        for key in work.routing_keys:
            await queue.bind(exchange, routing_key=key)
            await queue.bind(redrive, routing_key=key)
        queues[work.name] = queue
    return queues


async def dead_letter(channel: AbstractChannel, message: AbstractIncomingMessage, queue: WorkQueue,
                      reason: str, detail: str) -> None:
    """Re-publish `message` to `queue`'s dead-letter queue with the reason (confirmed), then ack it."""
    headers = {**(message.headers or {}), REASON_HEADER: reason, DETAIL_HEADER: detail[:1000],
               DEAD_LETTERED_AT_HEADER: datetime.now(timezone.utc).isoformat(timespec="seconds"),
               ORIGINAL_ROUTING_KEY_HEADER: message.routing_key or "", ORIGINAL_USER_HEADER: message.user_id or ""}
    copy = event_message(message.body, message_id=message.message_id, event_type=message.type,
                         timestamp=message.timestamp, headers=headers)
    dlx = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
    await dlx.publish(copy, routing_key=queue.name, mandatory=True)
    await message.ack()
