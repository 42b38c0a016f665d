"""What ops run by hand: publish a manual trigger or a cancel, and list or show jobs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from urllib.parse import urlparse

import aio_pika

from messages import TrainingCancel, TrainingOverrides, TrainingRequested, make_event
from service.job_store import JobStatus, JobStore
from service.settings import Settings
from service.topology import declare_exchange, event_message


async def publish(settings: Settings, event) -> None:
    """Publish with confirms, as the connection's own user (RabbitMQ refuses a forged user_id)."""
    url = settings.amqp_url.get_secret_value()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare_exchange(channel)
        message = event_message(event.to_bytes(), message_id=event.id, event_type=event.type,
                                user_id=urlparse(url).username or "guest")
        await exchange.publish(message, routing_key=event.data.ROUTING_KEY, mandatory=True)


def request_training(settings: Settings, *, dataset_id: str, version: str, overrides: list[str], reason: str,
                     export_only: bool = False, checkpoint_uri: str | None = None,
                     resume_job_id: str | None = None) -> str:
    values = dict(item.split("=", 1) for item in overrides)
    data = TrainingRequested(dataset_id=dataset_id, version=version if version == "latest" else int(version),
                             overrides=TrainingOverrides.model_validate_strings(values), reason=reason,
                             export_only=export_only, checkpoint_uri=checkpoint_uri, resume_job_id=resume_job_id)
    event = make_event(data, subject=f"{dataset_id}/{version}", source="heimdall/ops")
    asyncio.run(publish(settings, event))
    return event.id


def cancel_job(settings: Settings, *, job_id: str, reason: str) -> str:
    event = make_event(TrainingCancel(job_id=job_id, reason=reason), subject=f"job/{job_id}", source="heimdall/ops")
    asyncio.run(publish(settings, event))
    return event.id


def list_jobs(settings: Settings, status: str | None, limit: int) -> str:
    store = JobStore(settings.job_store_url)
    rows = store.list_jobs(JobStatus(status) if status else None, limit)
    lines = [f"{'job id':36}  {'status':9}  {'try':>3}  {'dataset':28}  created"]
    for job in rows:
        lines.append(f"{job.id:36}  {job.status.value:9}  {job.attempt:>3}  "
                     f"{f'{job.dataset_id}/v{job.dataset_version}':28}  {job.created_at:%Y-%m-%d %H:%M:%S}")
    return "\n".join(lines)


def show_job(settings: Settings, job_id: str) -> str | None:
    job = JobStore(settings.job_store_url).get(job_id)
    return None if job is None else json.dumps(asdict(job), indent=2, default=str)
