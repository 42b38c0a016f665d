"""`heimdall-training serve`: the consumer, the worker, the outbox relay and the probes.

Lifecycle: migrate the job store, connect (one robust connection to consume, another to
publish), declare the topology, start consuming; on SIGTERM or SIGINT stop consuming, let the
running job checkpoint (bounded by `shutdown_grace_s`), put it back in the queue, and exit 0.
The background tasks (worker, outbox relay, metrics, purge) catch their own errors; one that
ends anyway makes /readyz fail and the service exit non-zero, so Docker or Kubernetes restarts it.
This module never imports torch, Lightning, MLflow or ONNX: training happens in a child process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import aio_pika

from service.consumer import Consumer
from service.intake import Intake
from service.jobs.store import JobStore
from foundation.logs import log_event
from service.outbox import OutboxRelay
from service.probes import ProbeServer, StoreCheck
from service.retention import purge
from service.metrics import ServiceMetrics
from foundation.settings import Settings
from service.topology import REDRIVES_HEADER, WORK_QUEUES, declare_exchange, declare_topology
from service.runner.worker import JobRunner

log = logging.getLogger(__name__)
METRICS_REFRESH_S = 5.0
EXECUTOR_SPARE_THREADS = 12  # worker, heartbeat, child pipes, relay, metrics, purge, intake, probes


async def connect(settings: Settings, role: str) -> aio_pika.abc.AbstractRobustConnection:
    return await aio_pika.connect_robust(settings.amqp_url.get_secret_value(),
                                         client_properties={"connection_name": f"heimdall-training-{role}-"
                                                                               f"{settings.replica_id}"})


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = JobStore(settings.job_store_url, timeout_s=settings.job_store_timeout_s)
        self.store_check = StoreCheck(self.store.read.ping)
        self.metrics = ServiceMetrics()
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        # Room for every message in flight, each waiting up to the store's deadline, plus the loops
        # and probes: the default (cores + 4) would queue the lease heartbeat behind a stalled store.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(
            self.settings.prefetch_count * len(WORK_QUEUES) + EXECUTOR_SPARE_THREADS, thread_name_prefix="service"))
        await asyncio.to_thread(self.store.migrate)
        self.consume_conn = await connect(self.settings, "consume")
        self.publish_conn = await connect(self.settings, "publish")
        consume_channel = await self.consume_conn.channel()
        await consume_channel.set_qos(prefetch_count=self.settings.prefetch_count)
        # on_return_raises: an unroutable mandatory publish raises PublishError instead of passing as sent
        publish_channel = await self.publish_conn.channel(publisher_confirms=True, on_return_raises=True)
        queues = await declare_topology(consume_channel)
        self.relay = OutboxRelay(self.store, await declare_exchange(publish_channel), self.metrics)
        self.runner = JobRunner(self.settings, self.store, self.metrics, self.relay.notify)
        self.intake = Intake(self.store)  # consumes only while the job store answers
        consumer = Consumer(self.settings, self.store, publish_channel, on_accepted=self.on_accepted,
                            on_cancel=self.runner.cancel, on_store_away=self.intake.store_away)
        self.worker = asyncio.create_task(self.runner.run(), name="worker")
        self.tasks = [asyncio.create_task(self.relay.run(), name="outbox"),
                      asyncio.create_task(self.every(METRICS_REFRESH_S, self.metrics.refresh, self.store),
                                          name="metrics"),
                      asyncio.create_task(self.every(self.settings.purge_interval_s, self.purge), name="purge"),
                      asyncio.create_task(self.intake.watch(), name="intake")]
        await self.intake.start({queues[work.name]: partial(self.on_message, consumer, work) for work in WORK_QUEUES})
        self.probes = ProbeServer({"/healthz": self.healthz, "/readyz": self.readyz, "/metrics": self.render_metrics})
        if self.settings.http_port:
            await self.probes.start(self.settings.http_port)
        log_event(log, "serving", replica_id=self.settings.replica_id, queues=[w.name for w in WORK_QUEUES])

    def on_accepted(self) -> None:
        self.relay.notify()
        self.runner.wake.set()

    async def on_message(self, consumer: Consumer, work, message) -> None:
        log_event(log, "received", event_id=message.message_id, routing_key=message.routing_key)
        action = await consumer.handle(message, work)
        self.metrics.messages.labels(action=action.value).inc()
        if (message.headers or {}).get(REDRIVES_HEADER):  # an operator's `dead-letters redrive`, consumed
            self.metrics.redriven.labels(routing_key=message.routing_key, action=action.value).inc()
        self.relay.notify()

    async def run_until(self, stop: asyncio.Event) -> int:
        """Serve until `stop` is set (0) or a background task ends by itself (1), then stop."""
        signalled = asyncio.create_task(stop.wait())
        await asyncio.wait([signalled, self.worker, *self.tasks], return_when=asyncio.FIRST_COMPLETED)
        died = self.died()
        if died:
            log.error("background task ended: %s; stopping so that the supervisor restarts the service",
                      ", ".join(died), extra={"fields": {"event": "task died", "tasks": died}})
        signalled.cancel()
        await self.stop()
        return 1 if died else 0

    async def stop(self) -> None:
        log_event(log, "stopping", replica_id=self.settings.replica_id)
        await self.intake.stop()  # stop taking work first (the broker away: unacked messages return anyway)
        await self.runner.shutdown()
        try:  # the worker records the interrupted job (back to the queue) before it returns
            await asyncio.wait_for(self.worker, self.settings.shutdown_grace_s)
        except asyncio.TimeoutError:
            log.warning("worker did not finish within the shutdown grace; its lease will expire instead")
        for task in self.tasks:  # the relay stops before the last flush, so no row goes out twice from here
            task.cancel()
        try:  # publish what the shutdown decided; if the broker is away the outbox keeps it for next time
            await asyncio.wait_for(self.relay.relay_once(), 10)
        except Exception as exc:
            log.warning("outbox not flushed at shutdown (kept for the next start): %s", exc)
        await self.probes.close()
        await self.consume_conn.close()
        await self.publish_conn.close()
        self.store.close()
        log_event(log, "stopped", replica_id=self.settings.replica_id)

    @staticmethod
    async def every(interval_s: float, fn, *args) -> None:
        """Run fn in a thread every interval_s; its failures are logged, never fatal."""
        while True:
            try:
                await asyncio.to_thread(fn, *args)
            except Exception as exc:
                log.warning("%s failed: %s", getattr(fn, "__name__", fn), exc)
            await asyncio.sleep(interval_s)

    def purge(self) -> None:
        purged = purge(self.store, self.settings)
        if any(vars(purged).values()):
            log_event(log, "purged", **vars(purged))

    def died(self) -> list[str]:
        """Background tasks that ended although nothing asked them to."""
        return [task.get_name() for task in [self.worker, *self.tasks] if task.done() and not task.cancelled()]

    async def healthz(self):
        return 200, b"ok\n", "text/plain"

    async def readyz(self):
        problems = [name for name, conn in (("consume", self.consume_conn), ("publish", self.publish_conn))
                    if conn.is_closed]
        if not self.relay.healthy:
            problems.append("outbox")
        problems += [f"{name}-died" for name in self.died()]
        if not await self.store_check.answers():
            problems.append("job-store")
        body = ("not ready: " + ", ".join(problems) if problems else "ready") + "\n"
        return (503 if problems else 200), body.encode(), "text/plain"

    async def render_metrics(self):
        return 200, self.metrics.render(), "text/plain; version=0.0.4"


async def serve(settings: Settings) -> int:
    """Runs until SIGTERM or SIGINT (returns 0) or until a background task dies (returns 1)."""
    service = Service(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await service.start()
    return await service.run_until(stop)
