"""The worker: claims one job at a time and runs it in a child process until it ends.

Each job ends in exactly one of model.registered, a final training.failed, or training.cancelled,
written to the outbox in the same transaction as the job's last state change (`outcomes.py`),
retried until the store answers. A shutdown puts the job back in the queue after the child has
checkpointed, with its attempt given back; a crash (kill -9) leaves a lease that expires, and
whichever replica claims the job next resumes it from the checkpoint. A child that says nothing
for `child_silence_s` (stopped, deadlocked) is killed and the job retried. Nothing that goes wrong
around a job (a bug, a bad result) leaves it running forever: after `max_attempts` the job ends
with a final training.failed that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from foundation.child_protocol import (ChildMessage, Failure, JobSpec, PermitRequest, Progress, Started, StopReason,
                                       write_spec)
from foundation.errors import HeimdallError
from foundation.logs import log_event
from foundation.settings import Settings
from messages import TrainingProgress, TrainingStarted, make_event
from service.jobs.events import abandoned_failure, failed_message, outbox
from service.jobs.store import Job, JobStore, LostClaim
from service.metrics import AttemptEnd, ServiceMetrics
from service.runner.child_process import Outcome, TrainingProcess
from service.runner.job_command import job_spec
from service.runner.outcomes import OutcomeRecorder
from service.runner.warm_spare import WarmSpare

log = logging.getLogger(__name__)
IDLE_POLL_S = 2.0
RECORD_RETRY_FIRST_S, RECORD_RETRY_MAX_S = 0.5, 30.0  # recording an outcome: backoff while the store is away


class JobRunner:
    def __init__(self, settings: Settings, store: JobStore, metrics: ServiceMetrics, on_messages,
                 spare_command: list[str] | None = None):
        self.settings, self.store, self.metrics = settings, store, metrics
        self.on_messages = on_messages  # wakes the outbox relay
        self.wake = asyncio.Event()
        self.stopping = False
        self.current: tuple[Job, TrainingProcess] | None = None
        self.stop_reason: StopReason | None = None
        self.last_heard = 0.0  # monotonic time of the running child's last protocol message
        self.recorder = OutcomeRecorder(settings, store)
        self.spare = WarmSpare(settings, command=spare_command, on_ready=metrics.warm_spare_ready.set) \
            if settings.warm_spare else None  # spare_command: `python -m training` unless a test's stand-in

    @property
    def heartbeat_s(self) -> float:
        return min(2.0, self.settings.lease_s / 3)

    async def run(self) -> None:
        if self.spare:
            await self.spare.ensure()
        while not self.stopping:
            job = await self.claim()
            if job is None:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), IDLE_POLL_S)
                except asyncio.TimeoutError:
                    pass
            elif self.stopping:  # claimed while shutting down: hand it straight back (or its lease expires)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.store.requeue, job.id, self.settings.replica_id, keep_attempt=True)
            else:
                await self.run_guarded(job)
                await self.start_spare()
        if self.spare:
            await self.spare.close()

    async def start_spare(self) -> None:
        """The next job's spare, once this job has ended: its imports no longer compete with the job."""
        if self.spare and not self.stopping:
            try:
                await self.spare.ensure()
            except Exception as exc:  # e.g. out of processes: the next job's take tries again
                log.warning("warm spare not started: %s", exc, extra={"fields": {"event": "spare failed"}})

    async def claim(self) -> Job | None:
        try:
            return await asyncio.to_thread(
                self.store.claim_next, self.settings.replica_id, self.settings.lease_s,
                max_attempts=self.settings.max_attempts,
                abandoned_message=lambda job: failed_message(job, abandoned_failure(job), retryable=False))
        except Exception as exc:  # the store away, or a bug: the worker itself must never die
            log.warning("claim failed: %s", exc, extra={"fields": {"event": "claim failed"}})
            return None

    async def run_guarded(self, job: Job) -> None:
        """Run the job; anything that escapes becomes a recorded failure (retried up to max_attempts)."""
        started = time.monotonic()
        try:
            await self.run_job(job, started)
        except Exception as exc:
            log.exception("the worker failed around the job", extra={"fields": {"job_id": job.id}})
            failure = Failure.of(exc, prefix="worker: ").model_copy(
                update={"retryable": getattr(exc, "retryable", True)})
            try:
                outcome_name = await asyncio.to_thread(self.recorder.record_failure, job, failure)
            except Exception:  # the store is away too: the lease expires and the claim cap ends the job
                log.exception("could not record the failure", extra={"fields": {"job_id": job.id}})
                outcome_name = AttemptEnd.WORKER_ERROR
            self.done(job, outcome_name, Outcome(returncode=-1), started)
            await asyncio.sleep(IDLE_POLL_S)

    def cancel(self, job_id: str) -> None:
        """A cancel arrived: stop the job now if it runs here (other replicas see the flag)."""
        if self.current and self.current[0].id == job_id:
            self._stop(StopReason.CANCEL)

    async def shutdown(self) -> None:
        """Stop picking work; let the running child checkpoint, then return."""
        self.stopping = True
        self.wake.set()
        self._stop(StopReason.SHUTDOWN)  # a job whose child is still starting sees it as soon as the child is up
        if self.current:
            await self.current[1].stop(self.settings.shutdown_grace_s)

    def _stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            if self.current:
                log_event(log, "stopping child", job_id=self.current[0].id, reason=reason.value,
                          signal="SIGKILL" if reason is StopReason.SILENT else "SIGTERM")
            if self.current and reason is StopReason.SILENT:
                self.current[1].signal(signal.SIGKILL)  # stopped or stuck: it would never checkpoint
            elif self.current:
                asyncio.get_running_loop().create_task(self.current[1].stop(self.settings.shutdown_grace_s))

    async def run_job(self, job: Job, started: float) -> None:
        self.stop_reason = None
        log_event(log, "claimed", job_id=job.id, attempt=job.attempt, dataset=f"{job.dataset_id}/v{job.dataset_version}")
        if job.cancel_requested:
            return await self.finish(job, Outcome(returncode=-1), StopReason.CANCEL, started)
        heartbeat = asyncio.create_task(self.heartbeat(job, started))  # before any slow step: the claim stays ours
        process = None
        try:
            process = await self.start_child(await asyncio.to_thread(job_spec, self.settings, job))
            self.current, self.last_heard = (job, process), time.monotonic()
            if self.stop_reason:  # a cancel or a lost claim arrived while the child was starting
                asyncio.get_running_loop().create_task(process.stop(self.settings.shutdown_grace_s))
            last_progress = 0.0
            async for message in process.messages():
                self.last_heard = time.monotonic()
                last_progress = await self.on_message(job, process, message, last_progress)
            outcome = await process.wait()
        finally:
            heartbeat.cancel()
            self.current = None
            if process is not None:
                process.signal(signal.SIGKILL)  # never leave a child running behind a failed worker
        await self.finish(job, outcome, self.stop_reason, started)

    async def start_child(self, spec: JobSpec) -> TrainingProcess:
        if self.spare is None:
            spec_file = await asyncio.to_thread(write_spec, spec, spec.checkpoint_dir / "job-spec.json")
            return await TrainingProcess.cold(spec_file, self.settings)
        return await self.spare.take(spec)  # the next spare starts when this job has ended (`run`)

    async def on_message(self, job: Job, process: TrainingProcess, message: ChildMessage,
                         last_progress: float) -> float:
        if isinstance(message, PermitRequest):  # the child is about to register: only while the claim is ours
            await process.answer_permit(message.request_id, await self.may_register(job))
        elif isinstance(message, Started):
            await self.publish(make_event(TrainingStarted(job_id=job.id, attempt=job.attempt,
                                                          mlflow_run_id=message.mlflow_run_id),
                                          subject=f"job/{job.id}"))
        elif isinstance(message, Progress) and time.monotonic() - last_progress >= self.settings.progress_interval_s:
            await self.publish(make_event(TrainingProgress(
                job_id=job.id, epoch=message.epoch, max_epochs=message.max_epochs, eta_s=message.eta_s,
                metrics={k: message.metrics.get(k) for k in ("train_loss", "val_loss", "val_median_error_m")}),
                subject=f"job/{job.id}"))
            return time.monotonic()
        return last_progress

    async def may_register(self, job: Job) -> bool:
        if self.stop_reason is not None:
            return False
        try:
            held = await asyncio.to_thread(self.store.renew_lease, job.id, self.settings.replica_id,
                                           self.settings.lease_s)
        except Exception as exc:
            log.warning("no registration permit: %s", exc, extra={"fields": {"job_id": job.id}})
            return False
        log_event(log, "registration permit", job_id=job.id, attempt=job.attempt, granted=held)
        return held

    async def publish(self, event) -> None:
        try:
            await asyncio.to_thread(self.store.add_messages, [outbox(event)], job_id=event.data.job_id)
        except HeimdallError as exc:  # started and progress are informative: losing one never stops a job
            log.warning("event not recorded: %s", exc.message, extra={"fields": {"job_id": event.data.job_id}})
        self.on_messages()

    async def heartbeat(self, job: Job, started: float) -> None:
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                held = await asyncio.to_thread(self.store.renew_lease, job.id, self.settings.replica_id,
                                               self.settings.lease_s)
                fresh = await asyncio.to_thread(self.store.read.get, job.id)
            except Exception as exc:  # the store away for a moment: keep trying until the lease would lapse
                if time.monotonic() - renewed >= self.settings.lease_s:
                    held, fresh = False, None
                else:
                    log.warning("lease not renewed: %s", exc, extra={"fields": {"job_id": job.id}})
                    continue
            if not held:
                self._stop(StopReason.LOST_CLAIM)
                return
            renewed = time.monotonic()
            if fresh is not None and fresh.cancel_requested:
                self._stop(StopReason.CANCEL)
            elif time.monotonic() - started > self.settings.job_timeout_s:
                self._stop(StopReason.TIMEOUT)
            elif self.current and time.monotonic() - self.last_heard > self.settings.child_silence_s:
                self._stop(StopReason.SILENT)

    async def finish(self, job: Job, outcome: Outcome, stop_reason: StopReason | None, started: float) -> None:
        """Record how the job ended, retried until the store answers: a registered model always ends
        in model.registered, never in a failure because the store was away at that moment."""
        delay_s = RECORD_RETRY_FIRST_S
        while True:
            try:
                outcome_name = await asyncio.to_thread(self.recorder.record_outcome, job, outcome, stop_reason)
                break
            except LostClaim:
                outcome_name = AttemptEnd.LOST_CLAIM  # another replica owns the job now; it will report it
                break
            except Exception as exc:  # the store away: the outcome is kept here until it answers
                if self.stopping:  # handed over: the lease lapses, and the next claim finds the registered model
                    outcome_name = AttemptEnd.UNRECORDED
                    break
                log.warning("outcome not recorded, retrying in %.1f s: %s", delay_s, exc,
                            extra={"fields": {"job_id": job.id, "event": "record retry"}})
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RECORD_RETRY_MAX_S)
        self.done(job, outcome_name, outcome, started)

    def done(self, job: Job, outcome_name: AttemptEnd, outcome: Outcome, started: float) -> None:
        elapsed = time.monotonic() - started
        self.metrics.job_finished(outcome_name, elapsed)
        log_event(log, outcome_name.value, job_id=job.id, attempt=job.attempt, returncode=outcome.returncode,
                  elapsed_s=round(elapsed, 2))
        self.on_messages()
        self.wake.set()
