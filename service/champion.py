"""Ops moves of the `champion` alias (`model.promote`), each announced by one `model.champion-changed`.

The alias lives in MLflow, which this service never imports, so the move runs in a short child,
`python -m training.promote` (`foundation.champion_move` is its answer). A child rather than calls
to MLflow's REST API from here: it works with every tracking URI the jobs work with (an `http(s)`
server, and the embedded SQLite of the single-node default, which has no REST API), it
authenticates and verifies TLS as MLflow's own client does, and MLflow's errors are translated in
the one place the jobs translate them (`training.registry`). Its price, a second or two of imports,
is nothing for an operator's occasional command.

Exactly once per promote event: a promote recorded already is acknowledged without running
anything; otherwise the child moves the alias (or recognises, from the version's tags, the move an
earlier try of the same event made before its record was lost), and the event is recorded as
processed in the same transaction that puts its `model.champion-changed` in the outbox
(`service.jobs.promotions`). The announcements follow the moves: a replica moves the alias for one
promote at a time, in the order the promotes arrive; and a champion that a running job's gate made,
whose move the worker has not recorded yet (the second between the alias and the job's end), is
not moved until it has been: the promote is retried like any transient failure.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from foundation.champion_move import ChampionMove, MoveOutcome
from foundation.errors import RegistryError
from foundation.exit_codes import die_with_parent
from foundation.logs import log_event, printable
from foundation.settings import Settings
from messages import ModelChampionChanged, ModelPromote
from service.jobs.events import champion_changed_message
from service.jobs.promotions import promote_recorded, record_promote
from service.jobs.store import JobStatus, JobStore
from service.runner.child_process import child_environment

log = logging.getLogger(__name__)
PROMOTE_CHILD = [sys.executable, "-m", "training.promote"]
PROMOTE_TIMEOUT_S = 120.0  # MLflow calls bounded by their own retries; a child past this is stuck
REASON_ARG_CHARS = 1000  # the child tags the version with the reason; the event keeps all of it
MAX_RUNNING_JOBS = 1000  # far more than replicas: each runs one job at a time


class PromoteRefused(Exception):
    """A promote that must not or cannot be obeyed; dead-lettered with `reason`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class ChampionMover:
    def __init__(self, settings: Settings, store: JobStore):
        self.settings, self.store = settings, store
        self.one_at_a_time = asyncio.Lock()

    async def promote(self, event_id: str, data: ModelPromote) -> None:
        """Move the alias for this promote, once. Raises PromoteRefused, RegistryError (retryable:
        MLflow or the object store away), JobStoreUnavailable."""
        if data.model_name != self.settings.model_name:
            raise PromoteRefused("unknown-model", f"this service registers {self.settings.model_name!r}, "
                                                  f"not {data.model_name!r}")
        async with self.one_at_a_time:
            if await asyncio.to_thread(promote_recorded, self.store, event_id):
                log_event(log, "duplicate", event_id=event_id, model_version=data.version)
                return
            move = await self.run_child(event_id, data)
            message = None
            if move.outcome is MoveOutcome.MOVED:
                message = champion_changed_message(ModelChampionChanged(
                    model_name=data.model_name, version=move.version, previous_version=move.previous_version,
                    onnx=move.onnx, card_uri=move.card_uri, cause="ops", trigger_id=event_id, reason=data.reason))
            recorded = await asyncio.to_thread(record_promote, self.store, event_id, message)
        log_event(log, f"champion {move.outcome.value}" if recorded else "duplicate", event_id=event_id,
                  model_version=move.version, previous_version=move.previous_version, detail=move.detail)

    async def run_child(self, event_id: str, data: ModelPromote) -> ChampionMove:
        """The child's answer. Raises PromoteRefused, RegistryError (retryable), JobStoreUnavailable."""
        running = await asyncio.to_thread(self.store.read.list_jobs, JobStatus.RUNNING, MAX_RUNNING_JOBS)
        arguments = ["--version", str(data.version), "--event-id", event_id, "--reason", data.reason[:REASON_ARG_CHARS],
                     *[arg for job in running for arg in ("--running-job", job.id)]]
        proc = await asyncio.create_subprocess_exec(
            *PROMOTE_CHILD, *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent, env=child_environment(self.settings))
        try:
            out, err = await asyncio.wait_for(proc.communicate(), PROMOTE_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise RegistryError(f"moving the champion took over {PROMOTE_TIMEOUT_S:.0f} s; killed", retryable=True)
        try:
            move = ChampionMove.model_validate_json(out.strip().splitlines()[-1])
        except (IndexError, ValidationError) as exc:
            tail = printable(err.decode(errors="replace").strip()[-500:])
            raise RegistryError(f"moving the champion ended (exit {proc.returncode}) without an answer: {tail}",
                                retryable=True) from exc
        if move.outcome is MoveOutcome.REFUSED:
            raise PromoteRefused(move.reason, move.detail)
        if move.outcome is MoveOutcome.FAILED:
            raise RegistryError(f"moving the champion: {move.detail}", retryable=True)
        return move
