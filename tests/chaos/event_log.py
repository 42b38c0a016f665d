"""What the service publishes during a chaos trial, seen from the bus: every copy, stamped on arrival."""

from __future__ import annotations

import asyncio
import time
import uuid

from messages import constants as wire
from tests.support.broker import _drain

# Everything serve publishes; a key left out would be unroutable in the trial's vhost and stay in its outbox.
OUTPUT_KEYS = (wire.TRAINING_ACCEPTED, wire.TRAINING_STARTED, wire.TRAINING_PROGRESS, wire.TRAINING_FAILED,
               wire.TRAINING_CANCELLED, wire.MODEL_REGISTERED, wire.MODEL_CHAMPION_CHANGED)


class EventLog:
    """What the service publishes to heimdall.events in one vhost, stamped on arrival (every copy)."""

    def __init__(self, url: str, keys: tuple[str, ...] = OUTPUT_KEYS):
        self.url, self.queue = url, f"chaos-tap-{uuid.uuid4().hex[:8]}"
        self.copies: list[tuple[float, object]] = []
        for key in keys:
            self.bind(key)

    def bind(self, key: str) -> None:
        self.copies += [(time.monotonic(), d) for d in asyncio.run(_drain(self.url, self.queue, key))]

    def poll(self) -> None:
        try:  # the broker may be away during a fault: what it holds arrives on a later poll
            found = asyncio.run(asyncio.wait_for(_drain(self.url, self.queue, None), 30))
        except Exception:
            return
        now = time.monotonic()
        self.copies += [(now, d) for d in found]

    def events(self, routing_key: str | None = None, **data) -> list[dict]:
        """Distinct events (by CloudEvent id), in order of first arrival."""
        self.poll()
        unique: dict[str, dict] = {}
        for _, delivery in self.copies:
            if routing_key is None or delivery.routing_key == routing_key:
                body = delivery.json()
                unique.setdefault(body["id"], {**body, "routing_key": delivery.routing_key})
        return [b for b in unique.values() if all(b["data"].get(k) == v for k, v in data.items())]

    def wait_for(self, routing_key: str, count: int = 1, timeout_s: float = 180, **data) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while len(found := self.events(routing_key, **data)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {count} × {routing_key} {data} within {timeout_s:.0f}s")
            time.sleep(0.3)
        return found

    def first_after(self, t: float, job_id: str | None = None) -> float | None:
        """Arrival time of the first copy after `t` (of an event about `job_id`, when given)."""
        self.poll()
        times = [at for at, d in self.copies if at > t and (job_id is None or d.json()["data"].get("job_id") == job_id)]
        return min(times, default=None)
