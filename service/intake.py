"""Taking triggers from the work queues only while the job store answers.

RabbitMQ counts every return of a message towards its work queue's delivery limit, so a replica
that kept consuming while the job store is away would pass a valid trigger round until it is
dead-lettered (`delivery_limit`). The intake stops consuming (`basic.cancel`) as soon as the store
is found away, by a handler (`store_away`) or by its own probe, and consumes again once the store
answers. The probe also runs while consuming, so an idle replica stops too. A message already
delivered is held and retried by its handler (`service.consumer`) and given back only before
RabbitMQ's `consumer_timeout` would take it; it then waits, ready and unconsumed, until a store
answers: an outage of any length costs a trigger at most one delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from foundation.logs import log_event
from service.jobs.store import JobStore

log = logging.getLogger(__name__)
PROBE_S = 5.0  # how often the store is probed, consuming or not
PROBE_TIMEOUT_S = 10.0  # a store that does not answer in this long is away
BROKER_CALL_TIMEOUT_S = 10.0  # basic.consume / basic.cancel while the broker itself may be away

OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]


class Intake:
    def __init__(self, store: JobStore):
        self.store = store
        self.callbacks: dict[AbstractQueue, OnMessage] = {}
        self.tags: dict[AbstractQueue, str] = {}  # the queues consumed now, with their consumer tags
        self.away = asyncio.Event()  # set by a handler that found the store away
        self.lock = asyncio.Lock()
        self.stopped = False
        self.probe: asyncio.Future | None = None

    @property
    def consuming(self) -> bool:
        return bool(self.tags)

    async def start(self, callbacks: dict[AbstractQueue, OnMessage]) -> None:
        """Consume every queue with its callback; raises when the broker refuses."""
        self.callbacks = callbacks
        await self.resume()

    def store_away(self) -> None:
        """A handler found the job store away: stop consuming now, not at the next probe."""
        self.away.set()

    async def watch(self) -> None:
        """The background task: pause while the store is away, resume when it answers. Never ends."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.away.wait(), PROBE_S)
            try:
                if self.away.is_set():
                    self.away.clear()
                    await self.pause("a handler found the job store away")
                if await self.store_answers():
                    await self.resume()
                else:
                    await self.pause("the job store does not answer")
            except Exception as exc:  # the broker away (the robust connection comes back by itself)
                log.warning("intake: %s", exc, extra={"fields": {"event": "intake failed", "error": str(exc)}})

    async def store_answers(self) -> bool:
        """One probe at a time: a probe stuck in a hung database is waited on again, never doubled."""
        if self.probe is None or self.probe.done():
            self.probe = asyncio.ensure_future(asyncio.to_thread(self.store.read.counts_by_status))
        try:
            await asyncio.wait_for(asyncio.shield(self.probe), PROBE_TIMEOUT_S)
            return True
        except Exception:
            return False

    async def pause(self, why: str) -> None:
        async with self.lock:
            if not self.tags:
                return
            for queue, tag in list(self.tags.items()):
                del self.tags[queue]  # forgotten first: a robust channel that reconnects does not restore it
                try:
                    await asyncio.wait_for(queue.cancel(tag), BROKER_CALL_TIMEOUT_S)
                except Exception as exc:  # the channel is gone: nothing is delivered on it any more
                    log.warning("could not cancel consumer %s: %s", tag, exc)
            log_event(log, "intake paused", reason=why, queues=[q.name for q in self.callbacks])

    async def resume(self) -> None:
        async with self.lock:
            missing = [q for q in self.callbacks if q not in self.tags]
            if self.stopped or not missing:
                return
            for queue in missing:
                self.tags[queue] = await self.consume(queue)
            log_event(log, "intake consuming", queues=[q.name for q in missing])

    async def consume(self, queue: AbstractQueue) -> str:
        """basic.consume with a tag of our own, so that one that timed out can still be cancelled."""
        tag = f"heimdall-training-{uuid.uuid4().hex[:12]}"
        try:
            await asyncio.wait_for(queue.consume(self.callbacks[queue], consumer_tag=tag), BROKER_CALL_TIMEOUT_S)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(tag), BROKER_CALL_TIMEOUT_S)
            raise
        return tag

    async def stop(self) -> None:
        """Stop taking work for good (shutdown)."""
        self.stopped = True
        await self.pause("shutting down")
