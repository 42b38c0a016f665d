"""Dead letters: list them with their reasons, and re-drive those whose cause is fixed.

A dead-letter queue (`<work queue>.dead-letter`) holds two kinds of message:
- refused by the service on purpose: a copy carrying `x-heimdall-reason`, `x-heimdall-detail`,
  `x-heimdall-dead-lettered-at` and the original routing key and user (`service.topology.dead_letter`);
- dead-lettered by RabbitMQ itself: the original message with RabbitMQ's `x-death` header, whose
  reason is `delivery_limit`, `expired`, `rejected` or `maxlen`.

Messages are read with `basic.get` and held unacknowledged, all of them before any is re-driven, so
each is seen once per run, even one that is re-driven, refused again and dead-lettered anew while
the command runs. What is not re-driven is given back (`basic.nack` with requeue; the broker does
the same should the command die), so nothing is lost. Re-driving publishes a copy (confirmed,
mandatory) to `heimdall.training.redrive` under the original routing key, which reaches only the
work queue the message came from, then acknowledges the dead letter: a crash between the two
leaves it in both places, and the consumer de-duplicates event ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote, urlparse

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from foundation.logs import log_event, printable
from foundation.settings import Settings
from service.ops_commands import age
from service.topology import (
    DEAD_LETTERED_AT_HEADER, DETAIL_HEADER, ORIGINAL_ROUTING_KEY_HEADER, ORIGINAL_USER_HEADER, REASON_HEADER,
    REDRIVE_EXCHANGE, REDRIVES_HEADER, WORK_QUEUES, WorkQueue, declare_topology, event_message,
)

log = logging.getLogger(__name__)
# What the dead-lettering added, dropped from a re-driven copy (RabbitMQ adds its own again).
BOOKKEEPING = {"x-death", "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange",
               "x-last-death-reason", "x-last-death-queue", "x-last-death-exchange", "x-delivery-count",
               REASON_HEADER, DETAIL_HEADER, DEAD_LETTERED_AT_HEADER, ORIGINAL_ROUTING_KEY_HEADER, ORIGINAL_USER_HEADER}
BROKER_REASONS = {"delivery_limit": "redelivered past the delivery limit of {queue}, never acknowledged",
                  "expired": "its time to live ran out in {queue}", "rejected": "rejected by a consumer of {queue}",
                  "maxlen": "{queue} was at its length limit"}


@dataclass(frozen=True)
class DeadLetter:
    queue: WorkQueue  # the work queue it came from
    message_id: str | None
    routing_key: str  # the original one
    reason: str  # x-heimdall-reason, or RabbitMQ's x-death reason
    detail: str
    dead_lettered_at: datetime | None
    user_id: str | None  # the original publisher's AMQP user, when it set one

    @classmethod
    def of(cls, queue: WorkQueue, message: AbstractIncomingMessage) -> "DeadLetter":
        headers = message.headers or {}
        death = (headers.get("x-death") or [{}])[0]  # newest first
        reason = _text(headers.get(REASON_HEADER)) or _text(death.get("reason")) or "unknown"
        detail = _text(headers.get(DETAIL_HEADER)) or BROKER_REASONS.get(reason, "dead-lettered from {queue}").format(
            queue=_text(death.get("queue")) or queue.name)
        keys = death.get("routing-keys") or [message.routing_key]
        at = headers.get(DEAD_LETTERED_AT_HEADER)
        at = datetime.fromisoformat(_text(at)) if at else death.get("time") or message.timestamp
        return cls(queue, message.message_id, _text(headers.get(ORIGINAL_ROUTING_KEY_HEADER)) or _text(keys[0]),
                   reason, detail, _utc(at), message.user_id or _text(headers.get(ORIGINAL_USER_HEADER)) or None)

    def matches(self, reason: str | None, message_id: str | None) -> bool:
        return (reason is None or reason == self.reason) and (message_id is None or message_id == self.message_id)


@dataclass
class RedriveCounts:
    redriven: int = 0
    kept: int = 0  # not matched: left in the dead-letter queue
    failed: int = 0  # matched, but the broker did not confirm the copy: left in the dead-letter queue too


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


async def _held(channel: AbstractChannel) -> list[tuple[DeadLetter, AbstractIncomingMessage]]:
    """Every message now in the dead-letter queues, held unacknowledged."""
    held = []
    for work in WORK_QUEUES:
        queue = await channel.declare_queue(work.dead_letter, passive=True)
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            held.append((DeadLetter.of(work, message), message))
    return held


async def list_dead_letters(settings: Settings) -> list[DeadLetter]:
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        held = await _held(await connection.channel())
        for _, message in held:
            await message.nack(requeue=True)
    return [letter for letter, _ in held]


async def redrive(settings: Settings, reason: str | None, message_id: str | None,
                  on_redriven: Callable[[DeadLetter], None] = lambda letter: None) -> RedriveCounts:
    """Re-drive the dead letters that match (all of them when neither filter is given), each once."""
    url = settings.amqp_url.get_secret_value()
    connection = await aio_pika.connect(url)
    counts = RedriveCounts()
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_topology(channel)  # the re-drive exchange, even before a service of this version started
        exchange = await channel.get_exchange(REDRIVE_EXCHANGE)
        for letter, message in await _held(channel):
            if not letter.matches(reason, message_id):
                counts.kept += 1
                await message.nack(requeue=True)
                continue
            try:
                await exchange.publish(_copy(message, letter, unquote(urlparse(url).username or "guest")),
                                       routing_key=letter.routing_key, mandatory=True)
            except aio_pika.exceptions.DeliveryError as exc:  # returned or nacked: it stays a dead letter
                log.warning("not re-driven: %s", exc, extra={"fields": {"event": "redrive failed",
                                                                        "event_id": letter.message_id}})
                counts.failed += 1
                await message.nack(requeue=True)
                continue
            await message.ack()
            counts.redriven += 1
            on_redriven(letter)
    log_event(log, "redriven", reason=reason, message_id=message_id, **vars(counts))
    return counts


def _copy(message: AbstractIncomingMessage, letter: DeadLetter, user: str) -> aio_pika.Message:
    """The message as first published, minus what dead-lettering added. RabbitMQ accepts a `user_id`
    only from that very user: it is kept when the operator re-drives as the original publisher;
    otherwise the copy carries none (and an ops message is refused as unauthorised again)."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in BOOKKEEPING}
    headers[REDRIVES_HEADER] = int(headers.get(REDRIVES_HEADER) or 0) + 1
    return event_message(message.body, message_id=message.message_id, event_type=message.type,
                         timestamp=message.timestamp, headers=headers,
                         **({"user_id": user} if letter.user_id == user else {}))


def dead_letters_table(letters: list[DeadLetter], now: datetime) -> str:
    """Per dead-letter queue: message id, original routing key, reason, age, detail."""
    lines = []
    for work in WORK_QUEUES:
        mine = [letter for letter in letters if letter.queue == work]
        lines.append(f"{work.dead_letter}: {len(mine)} message(s)")
        if mine:
            lines.append(f"  {'MESSAGE ID':36}  {'ROUTING KEY':18}  {'REASON':22}  {'AGE':>4}  DETAIL")
        for letter in mine:
            when = age(letter.dead_lettered_at, now) if letter.dead_lettered_at else "?"
            lines.append(f"  {printable(letter.message_id or '-'):36}  {printable(letter.routing_key):18}  "
                         f"{printable(letter.reason):22}  {when:>4}  {printable(letter.detail)}")
    return "\n".join(lines)
