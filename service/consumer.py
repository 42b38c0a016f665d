"""Turning consumed events into recorded jobs: validate, authorise, record, and only then ack.

One policy decides what happens to a message from the error alone (`decide`): acknowledge,
requeue for another try, or dead-letter with a reason. Handlers receive typed events, never dicts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pydantic import ValidationError

from messages import DatasetReady, InvalidMessage, ModelPromote, TrainingCancel, TrainingRequested, parse_event
from foundation.train_config import TrainConfig
from foundation.errors import HeimdallError
from service.champion import ChampionMover, PromoteRefused
from service.jobs.events import accepted_message, cancelled_message
from service.jobs.store import JobStore, JobStoreUnavailable
from service.jobs.tables import EVENT_ID_MAX_CHARS
from foundation.logs import log_event
from foundation.object_store import ObjectTooLarge, is_within, join_uri, open_store
from foundation.settings import Settings
from service.topology import WorkQueue, dead_letter

log = logging.getLogger(__name__)
REQUEUE_DELAY_S = 2.0  # a transient failure waits this long before its message goes back
# A transient failure (the job store or S3 away for a moment) is retried here, with backoff, this
# long before the message goes back to the queue: each requeue counts towards RabbitMQ's delivery
# limit, and a short database outage must not turn valid triggers into dead letters.
TRANSIENT_RETRY_S, TRANSIENT_BACKOFF_S = 60.0, 1.0
# The job store away: the intake has stopped consuming (`service.intake`), and the message in hand
# is held and retried this long, below RabbitMQ's consumer_timeout (30 min, checked once a minute),
# before it goes back to wait, unconsumed, until the store answers again.
STORE_AWAY_HOLD_S = 20 * 60.0


class Refused(Exception):
    """The message is well-formed but must not be obeyed; it is dead-lettered with `reason`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Action(str, Enum):
    ACK = "ack"  # handled (or a harmless duplicate)
    REQUEUE = "requeue"  # a transient failure: try again; RabbitMQ's delivery limit bounds the tries
    DEAD_LETTER = "dead-letter"  # can never be handled: park it with the reason


def decide(error: Exception | None) -> tuple[Action, str, str]:
    """The ack/requeue/dead-letter policy, from the error alone: (action, reason, detail)."""
    if error is None:
        return Action.ACK, "", ""
    if isinstance(error, (InvalidMessage, Refused)):
        return Action.DEAD_LETTER, error.reason, error.detail
    if isinstance(error, HeimdallError) and error.retryable:
        return Action.REQUEUE, "transient", error.message
    return Action.REQUEUE, "unexpected", f"{type(error).__name__}: {error}"


@dataclass
class Consumer:
    settings: Settings
    store: JobStore
    channel: AbstractChannel  # the publishing channel, for dead-letters
    on_accepted: Callable[[], None]  # wakes the worker
    on_cancel: Callable[[str], None]  # tells the local worker to stop a job it runs
    on_store_away: Callable[[], None] = lambda: None  # the job store is away: stop consuming (Intake)

    def __post_init__(self) -> None:
        self.champion = ChampionMover(self.settings, self.store)  # moves the champion alias for model.promote

    async def handle(self, message: AbstractIncomingMessage, queue: WorkQueue) -> Action:
        action, reason, detail = decide(await self.attempt(message))
        fields = {"event_id": message.message_id, "routing_key": message.routing_key, "action": action.value}
        if action is Action.ACK:
            await message.ack()
        elif action is Action.DEAD_LETTER:
            try:
                await dead_letter(self.channel, message, queue, reason, detail)
            except Exception as exc:  # the dead-letter copy was not confirmed: try the whole message again
                log.warning("dead-lettering failed; requeued", extra={"fields": {**fields, "error": str(exc)}})
                await asyncio.sleep(REQUEUE_DELAY_S)
                await message.nack(requeue=True)
                return Action.REQUEUE
            log_event(log, "dead-lettered", reason=reason, detail=detail, **fields)
        else:
            log.warning("requeued", extra={"fields": {"event": "requeued", "reason": reason, "detail": detail,
                                                      **fields}}, exc_info=reason == "unexpected")
            await asyncio.sleep(REQUEUE_DELAY_S)
            await message.nack(requeue=True)
        return action

    async def attempt(self, message: AbstractIncomingMessage) -> Exception | None:
        """Parse and dispatch; a transient failure is retried here for up to TRANSIENT_RETRY_S, the job
        store away for up to STORE_AWAY_HOLD_S."""
        started, delay = time.monotonic(), TRANSIENT_BACKOFF_S
        while True:
            try:
                await self.dispatch(parse_event(message.body, routing_key=message.routing_key), message.user_id)
                return None
            except HeimdallError as exc:
                store_away = isinstance(exc, JobStoreUnavailable)
                if store_away:
                    self.on_store_away()
                window = STORE_AWAY_HOLD_S if store_away else TRANSIENT_RETRY_S
                if not exc.retryable or time.monotonic() + delay > started + window:
                    return exc
                log.warning("transient failure; retrying", extra={"fields": {
                    "event": "retrying", "event_id": message.message_id, "detail": exc.message, "in_s": delay}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception as exc:  # every outcome goes through `decide`
                return exc

    async def dispatch(self, event, user_id: str | None) -> None:
        refuse_unstorable(event)
        data = event.data
        ops = (TrainingRequested, TrainingCancel, ModelPromote)
        if isinstance(data, ops) and user_id not in self.settings.ops_allowed_users:
            raise Refused("unauthorised", f"user_id {user_id!r} is not in the ops allow-list")
        if isinstance(data, DatasetReady):
            await asyncio.to_thread(self.check_dataset, data.dataset_id, data.version, data.uri)
            await self.accept(event.id, "auto", data.dataset_id, data.version, data.uri, {})
        elif isinstance(data, TrainingRequested):
            await self.on_requested(event.id, data)
        elif isinstance(data, TrainingCancel):
            await self.on_cancel_event(data)
        elif isinstance(data, ModelPromote):
            await self.on_promote(event.id, data)
        else:
            raise Refused("unknown-type", f"{event.type} is published by this service, not consumed")

    async def on_requested(self, event_id: str, data: TrainingRequested) -> None:
        version, uri = await asyncio.to_thread(self.resolve_dataset, data.dataset_id, data.version)
        checkpoint = await asyncio.to_thread(self.checkpoint_of, data)
        await self.accept(event_id, "manual", data.dataset_id, version, uri, data.overrides.explicit(),
                          export_only=data.export_only, checkpoint_uri=checkpoint)

    async def on_promote(self, event_id: str, data: ModelPromote) -> None:
        try:
            await self.champion.promote(event_id, data)
        except PromoteRefused as exc:
            raise Refused(exc.reason, exc.detail) from exc

    async def on_cancel_event(self, data: TrainingCancel) -> None:
        job = await asyncio.to_thread(self.store.request_cancel, data.job_id, data.reason, cancelled_message)
        if job is None:
            raise Refused("unknown-job", f"no job {data.job_id}")
        log_event(log, "cancel requested", job_id=data.job_id, status=job.status.value, reason=data.reason)
        self.on_cancel(data.job_id)

    async def accept(self, event_id: str, kind: str, dataset_id: str, version: int, uri: str, overrides: dict,
                     **extra) -> None:
        try:
            config = TrainConfig(**{**self.settings.default_training, **overrides})
        except ValidationError as exc:
            raise Refused("invalid-data", f"overrides: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
        result = await asyncio.to_thread(
            self.store.accept, event_id=event_id, trigger_kind=kind, dataset_id=dataset_id,
            dataset_version=version, dataset_uri=uri, config=config.model_dump(), config_hash=config.config_hash(),
            min_interval_s=self.settings.min_retrain_interval_s, accepted_message=accepted_message,
            cancelled_message=cancelled_message, **extra)
        job = result.job
        log_event(log, "accepted" if result.created else "duplicate", event_id=event_id, trigger_kind=kind,
                  job_id=job.id if job else None, dataset=f"{dataset_id}/v{version}",
                  superseded=[j.id for j in result.superseded])
        if result.created:
            self.on_accepted()

    def check_dataset(self, dataset_id: str, version: int, uri: str) -> None:
        """dataset.ready must point under an allowed location, at a manifest of that dataset and version."""
        if not any(is_within(uri, root) for root in self.settings.dataset_locations):
            raise Refused("dataset-not-allowed", f"{uri} is not under HEIMDALL_DATASET_ROOT_URI or "
                                                 f"HEIMDALL_ALLOWED_DATASET_LOCATIONS")
        limit = self.settings.max_manifest_bytes
        try:  # bounded: serve reads up to prefetch_count manifests at once, next to a running job
            manifest = json.loads(open_store(uri, self.settings.s3.credentials()).read_bytes("dataset.json", limit))
        except ObjectTooLarge as exc:
            raise Refused("dataset-too-large", f"{exc} (HEIMDALL_MAX_MANIFEST_BYTES)") from exc
        except (FileNotFoundError, ValueError) as exc:
            raise Refused("dataset-mismatch", f"{uri}: no readable dataset.json: {exc}") from exc
        found = (manifest.get("dataset_id"), manifest.get("version")) if isinstance(manifest, dict) else None
        if found != (dataset_id, version):
            raise Refused("dataset-mismatch", f"{uri}/dataset.json is {found}, the event says {(dataset_id, version)}")

    def checkpoint_of(self, data: TrainingRequested) -> str | None:
        """The checkpoint a manual request names: only the service's own locations or allowed ones."""
        if data.resume_job_id:
            if self.store.read.get(data.resume_job_id) is None:
                raise Refused("unknown-job", f"resume_job_id {data.resume_job_id!r} is not a job of this service")
            if self.settings.checkpoints_uri:  # uploaded: any replica can resume it
                return join_uri(self.settings.checkpoints_uri, f"{data.resume_job_id}/last.ckpt")
            return f"file://{self.settings.job_checkpoint_dir(data.resume_job_id)}/last.ckpt"
        uri = data.checkpoint_uri
        own = [f"file://{self.settings.state_dir / 'checkpoints'}", self.settings.models_uri,
               *filter(None, [self.settings.checkpoints_uri])]
        if uri is not None and not any(is_within(uri, root) for root in own + self.settings.dataset_locations):
            raise Refused("checkpoint-not-allowed", f"{uri} is not a location this service may read checkpoints from")
        return uri

    def resolve_dataset(self, dataset_id: str, version: int | str) -> tuple[int, str]:
        """A version ("latest" allowed) and its URI: from the dataset root when configured, else from
        the versions this service has already seen announced. Raises Refused when unknown."""
        root = self.settings.dataset_root_uri
        if root:
            versions = _versions_in(open_store(root, self.settings.s3.credentials()).list(f"{dataset_id}/"))
            wanted = max(versions, default=None) if version == "latest" else version
            if wanted in versions:
                return wanted, join_uri(root, f"{dataset_id}/v{wanted}")
        known = self.store.read.known_dataset(dataset_id, None if version == "latest" else version)
        if known is None:
            raise Refused("unknown-dataset", f"dataset {dataset_id} version {version} was never announced")
        return known


def refuse_unstorable(event) -> None:
    """A valid event the job store cannot keep is refused here, naming the field, rather than failing
    in the store (PostgreSQL) and being requeued until RabbitMQ drops it with no reason: an id longer
    than the store keeps, or a NUL character in any text. Raises Refused."""
    if len(event.id) > EVENT_ID_MAX_CHARS:
        raise Refused("invalid-envelope", f"id: {len(event.id)} characters, the job store keeps at most "
                                          f"{EVENT_ID_MAX_CHARS}")
    for field, text in _texts(event.model_dump(mode="json")):
        if "\x00" in text:
            where = field.replace("\x00", "\\0")  # a NUL in a key: the detail header must not carry one
            raise Refused("invalid-data" if field.startswith("data.") else "invalid-envelope",
                          f"{where}: contains a NUL character, which the job store cannot keep")


def _texts(value, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (keys too), with its dotted path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key, f"{path}.{key}".lstrip("."))
            yield from _texts(item, f"{path}.{key}".lstrip("."))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _texts(item, f"{path}[{i}]")


def _versions_in(keys: list[str]) -> set[int]:
    return {int(m.group(1)) for k in keys if (m := re.search(r"/v(\d+)/dataset\.json$", k))}
