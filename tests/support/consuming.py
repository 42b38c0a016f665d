"""The service's consuming side in the test's own event loop, wired as `service.app` wires it: the
topology on a throwaway vhost, a `Consumer` and the `Intake` that feeds it, against a real job store.
No worker runs: a test sees an accepted trigger as a job row in the store."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aio_pika

from foundation.settings import Settings
from service.consumer import Action, Consumer
from service.intake import Intake
from service.jobs.store import Job, JobStore
from service.topology import WORK_QUEUES, WorkQueue, declare_topology


def consumer_settings(state_dir: Path, amqp_url: str, job_store_url: str, datasets: Path) -> Settings:
    """Settings under which a `dataset.ready` for a version folder under `datasets` is valid."""
    return Settings(state_dir=state_dir, amqp_url=amqp_url, job_store_url=job_store_url,
                    allowed_dataset_locations=[f"file://{datasets}"], http_port=0)


@dataclass
class Consuming:
    intake: Intake
    handled: list[tuple[str | None, Action]] = field(default_factory=list)  # (message id, what the consumer did)

    def actions_on(self, message_id: str) -> list[Action]:
        return [action for mid, action in self.handled if mid == message_id]


@asynccontextmanager
async def consuming(settings: Settings, store: JobStore):
    connection = await aio_pika.connect_robust(settings.amqp_url.get_secret_value())
    try:
        channel = await connection.channel()
        publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queues = await declare_topology(channel)
        intake = Intake(store)
        consumer = Consumer(settings, store, publish_channel, on_accepted=lambda: None, on_cancel=lambda _: None,
                            on_store_away=intake.store_away)
        state = Consuming(intake)

        async def on_message(work: WorkQueue, message) -> None:
            state.handled.append((message.message_id, await consumer.handle(message, work)))

        await intake.start({queues[work.name]: partial(on_message, work) for work in WORK_QUEUES})
        watch = asyncio.create_task(intake.watch())
        try:
            yield state
        finally:
            watch.cancel()
            await intake.stop()
    finally:
        await connection.close()


async def wait_until(predicate, what: str, timeout_s: float = 30) -> None:
    """Until `await predicate()` is true; fails naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.05)


async def job_of(store: JobStore, trigger_id: str, timeout_s: float = 30) -> Job:
    """The job the trigger `trigger_id` created, once the store has it."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [job for job in await asyncio.to_thread(store.read.list_jobs, None, 500) if job.trigger_id == trigger_id]
        if jobs:
            return jobs[0]
        assert time.monotonic() < deadline, f"no job for trigger {trigger_id} within {timeout_s}s"
        await asyncio.sleep(0.2)
