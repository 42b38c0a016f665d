"""RabbitMQ for the tests: a throwaway vhost per session, a tap on heimdall.events, raw publishing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import aio_pika

from messages import constants as wire
from service.topology import event_message

INTRUDER, INTRUDER_PASSWORD = "heimdall-test-intruder", "intruder-pw"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def publishing_blocked():
    """RabbitMQ's memory alarm (high watermark 0) blocks every connection that publishes, consumers go on.
    The node is shared: its watermark comes back whatever happens."""
    read = "vm_memory_monitor:get_vm_memory_high_watermark()."
    was = subprocess.run(["rabbitmqctl", "-q", "eval", read], check=True, capture_output=True, text=True,
                         timeout=60).stdout.strip()  # 0.4, or {absolute,N}
    restore = ["absolute", was.strip("{}").split(",")[1]] if was.startswith("{absolute") else [was]
    rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        _await_alarm(True)
        yield
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", *restore)
        _await_alarm(False)


def _await_alarm(on: bool, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alarms = subprocess.run(["rabbitmqctl", "-q", "eval", "rabbit_alarm:get_alarms()."], check=True,
                                capture_output=True, text=True, timeout=60).stdout
        if ("memory" in alarms) == on:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the memory alarm is still {'off' if on else 'on'} after {timeout_s:.0f} s")


class Vhost:
    """A vhost of its own for the test session, usable by guest and by a user outside the allow-list."""

    def __init__(self):
        self.name = f"heimdall-test-{uuid.uuid4().hex[:8]}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        subprocess.run(["rabbitmqctl", "-q", "delete_user", INTRUDER], capture_output=True, timeout=60)
        rabbitmqctl("add_user", INTRUDER, INTRUDER_PASSWORD)
        rabbitmqctl("set_permissions", "-p", self.name, INTRUDER, ".*", ".*", ".*")

    def url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:5672/{self.name}"

    def close(self) -> None:
        rabbitmqctl("delete_vhost", self.name)
        subprocess.run(["rabbitmqctl", "-q", "delete_user", INTRUDER], capture_output=True, timeout=60)


async def _publish(url: str, body: bytes, routing_key: str, **properties) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(wire.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.publish(event_message(body, message_id=properties.pop("message_id", None),
                                             event_type=properties.pop("type", None), **properties),
                               routing_key=routing_key)


def publish(url: str, body: bytes | dict, routing_key: str, **properties) -> None:
    if isinstance(body, dict):
        properties.setdefault("message_id", body.get("id"))
        properties.setdefault("type", body.get("type"))
        body = json.dumps(body).encode()
    asyncio.run(_publish(url, body, routing_key, **properties))


@dataclass
class Delivery:
    routing_key: str
    body: bytes
    headers: dict
    message_id: str | None
    type: str | None
    delivery_mode: int | None = None  # the properties events.md fixes
    content_type: str | None = None
    timestamp: object = None
    app_id: str | None = None

    def json(self) -> dict:
        return json.loads(self.body)


async def _drain(url: str, queue_name: str, bind_to: str | None) -> list[Delivery]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, passive=bind_to is None)
        if bind_to:
            exchange = await channel.declare_exchange(wire.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
            await queue.bind(exchange, routing_key=bind_to)
        found = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            found.append(Delivery(message.routing_key, message.body, dict(message.headers or {}),
                                  message.message_id, message.type, int(message.delivery_mode or 0) or None,
                                  message.content_type, message.timestamp, message.app_id))
        return found


class Tap:
    """Everything published to heimdall.events from now on, collected from a queue bound to '#'."""

    def __init__(self, url: str):
        self.url, self.queue = url, f"tap-{uuid.uuid4().hex[:8]}"
        self.seen: list[Delivery] = asyncio.run(_drain(url, self.queue, "#"))

    def events(self, routing_key: str, **data) -> list[dict]:
        self.seen += asyncio.run(_drain(self.url, self.queue, None))
        bodies = [d.json() for d in self.seen if d.routing_key == routing_key]
        return [b for b in bodies if all(b["data"].get(k) == v for k, v in data.items())]

    def wait_for(self, routing_key: str, count: int = 1, timeout_s: float = 180, **data) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.events(routing_key, **data)
            if len(found) >= count:
                return found
            final = [f for f in self.events("training.failed") if not f["data"]["retryable"]]
            if routing_key == "model.registered" and final:
                raise AssertionError(f"a job failed instead: {final[-1]['data']}")
            time.sleep(0.5)
        raise AssertionError(f"no {count} × {routing_key} {data} within {timeout_s}s; saw "
                             f"{[(d.routing_key, d.json().get('data')) for d in self.seen][-20:]}")


def dead_letters(url: str, queue: str) -> list[Delivery]:
    return asyncio.run(_drain(url, queue, None))
