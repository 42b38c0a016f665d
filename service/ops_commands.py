"""What ops run by hand: publish a manual trigger, a cancel or a promote; list jobs, or show one job's timeline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import urlparse

import aio_pika

from messages import ModelPromote, TrainingCancel, TrainingOverrides, TrainingRequested, make_event
from messages.constants import TRAINING_PROGRESS
from service.jobs.store import JobStatus, JobStore
from service.jobs.tables import Job, utcnow
from service.jobs.timeline import Progress, TimelineEntry, job_timeline, latest_progress
from foundation.logs import format_clock, format_km, printable
from foundation.settings import Settings
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


def promote_model(settings: Settings, *, model_name: str, version: int, reason: str) -> str:
    """Publish model.promote: the service moves the champion alias to `version` (a rollback when older)."""
    data = ModelPromote(model_name=model_name, version=version, reason=reason)
    event = make_event(data, subject=f"{model_name}/{version}", source="heimdall/ops")
    asyncio.run(publish(settings, event))
    return event.id


@contextmanager
def existing_job_store(settings: Settings) -> Iterator[JobStore]:
    """The job store as it is, never created nor migrated: a command line of another version must not
    upgrade a production schema, and a mistyped URL must not leave an empty store behind.
    Raises NoJobStore (no store there, or another schema version), JobStoreUnavailable."""
    store = JobStore(settings.job_store_url, timeout_s=settings.job_store_timeout_s, create=False)
    try:
        store.check_schema()
        yield store
    finally:
        store.close()


def list_jobs(settings: Settings, status: str | None, limit: int) -> str:
    with existing_job_store(settings) as store:
        return jobs_table(store, JobStatus(status) if status else None, limit, utcnow())


def show_job(settings: Settings, job_id: str) -> str | None:
    """The job's report, or None when there is no such job."""
    with existing_job_store(settings) as store:
        return job_report(store, job_id, utcnow())


def jobs_table(store: JobStore, status: JobStatus | None, limit: int, now: datetime) -> str:
    """Newest first: id, state, dataset, attempt, progress (epoch/max, validation error, ETA), age."""
    rows = store.read.list_jobs(status, limit)
    progress = latest_progress(store, [job.id for job in rows])
    lines = [f"{'JOB ID':36}  {'STATE':9}  {'DATASET':26}  {'TRY':>3}  {'PROGRESS':42}  AGE"]
    for job in rows:
        lines.append(f"{job.id:36}  {job.status.value:9}  {f'{job.dataset_id} v{job.dataset_version}':26}  "
                     f"{job.attempt:>3}  {progress_text(job, progress.get(job.id)):42}  {age(job.created_at, now)}")
    return "\n".join(lines)


def progress_text(job: Job, progress: Progress | None) -> str:
    if progress is None:
        return "-"
    text = f"epoch {progress.epoch}/{progress.max_epochs}"
    if progress.val_median_error_m is not None:
        text += f", val error {format_km(progress.val_median_error_m)}"
    if job.status is JobStatus.RUNNING and progress.eta_s is not None:
        text += f", ETA {format_clock(progress.eta_s)}"
    return text


def age(moment: datetime, now: datetime) -> str:
    seconds = max((now - moment).total_seconds(), 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def job_report(store: JobStore, job_id: str, now: datetime) -> str | None:
    """The job, its timeline (from its outbox events) and where its model and MLflow run are."""
    job = store.read.get(job_id)
    if job is None:
        return None
    entries = job_timeline(store, job_id)
    lines = [f"job {job.id}: {job.status.value}, attempt {job.attempt}",
             f"  dataset    {job.dataset_id} v{job.dataset_version}  {job.dataset_uri}",
             f"  trigger    {job.trigger_kind} (event {job.trigger_id}), config {job.config_hash} "
             f"{json.dumps(job.config, sort_keys=True)}",
             f"  created    {job.created_at:%Y-%m-%d %H:%M:%S} UTC ({age(job.created_at, now)} ago)", "",
             "  timeline (UTC)"]
    lines += [f"  {at:%Y-%m-%d %H:%M:%S}  {text}" for at, text in collapse_progress(entries)]
    return "\n".join(lines + [""] + whereabouts(job, entries))


def collapse_progress(entries: list[TimelineEntry]) -> list[tuple[datetime, str]]:
    """One line per event, a run of progress events shown as its last one with the count."""
    lines: list[tuple[datetime, str]] = []
    run = 0
    for i, entry in enumerate(entries):
        if entry.routing_key == TRAINING_PROGRESS:
            run += 1
            if i + 1 < len(entries) and entries[i + 1].routing_key == TRAINING_PROGRESS:
                continue
        text = event_text(entry.routing_key, entry.data)
        lines.append((entry.at, text + (f" ({run} updates)" if run > 1 else "")))
        run = 0
    return lines


def event_text(routing_key: str, d: dict) -> str:
    match routing_key:
        case "training.accepted":
            return f"accepted     {d['dataset_id']} v{d['version']}, config {d['config_hash']}"
        case "training.started":
            run = f", MLflow run {d['mlflow_run_id']}" if d.get("mlflow_run_id") else ""
            return f"started      attempt {d['attempt']}{run}"
        case "training.progress":
            error = d["metrics"].get("val_median_error_m")
            return (f"progress     epoch {d['epoch']}/{d['max_epochs']}"
                    + (f", val error {format_km(error)}" if error is not None else ""))
        case "training.failed":
            then = "will retry" if d["retryable"] else "final"
            return f"failed       attempt {d['attempt']}, {d['stage']}: {printable(d['error_type'])}: {printable(d['message'])} ({then})"
        case "training.cancelled":
            return f"cancelled    {printable(d['reason'])}"
        case "model.registered":
            aliases = ", ".join(d["aliases"]) or "no aliases"
            return f"registered   version {d['model_version']} ({aliases}){'' if d['promoted'] else ', not promoted'}"
        case "model.champion-changed":
            was = f"version {d['previous_version']}" if d.get("previous_version") else "none"
            return f"champion     version {d['version']} (was {was}): {printable(d['reason'])}"
    return routing_key


def whereabouts(job: Job, entries: list[TimelineEntry]) -> list[str]:
    """Where the model and the MLflow run are: the registered event, else the last started one."""
    latest = {entry.routing_key: entry.data for entry in entries}
    registered, started = latest.get("model.registered"), latest.get("training.started")
    lines = []
    if registered:
        lines += [f"  model      {registered['model_uri']}",
                  f"  model.onnx {registered['onnx']['uri']}",
                  f"  model.json {registered['card_uri']}"]
    run_id = (registered or {}).get("mlflow_run_id") or (started or {}).get("mlflow_run_id")
    lines.append(f"  mlflow run {run_id}" if run_id else "  mlflow run none yet")
    if job.error:
        lines.append(f"  error      {job.error.get('stage')}: {printable(str(job.error.get('message')))}")
    return lines
