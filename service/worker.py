"""The worker: claims one job at a time and runs it in a child process until it ends.

Each job ends in exactly one of model.registered, a final training.failed, or training.cancelled,
written to the outbox in the same transaction as the job's last state change. A shutdown puts
the job back in the queue after the child has checkpointed; a crash (kill -9) leaves a lease that
expires, and whichever replica claims the job next resumes it from the checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from datetime import timedelta
from pathlib import Path

from messages import (ModelRegistered, TrainingFailed, TrainingProgress, TrainingStarted, make_event)
from service.exit_codes import EXIT_INTERRUPTED
from service.consumer import cancelled_message, outbox
from service.job_store import Job, JobStore, JobStoreUnavailable, LostClaim, utcnow
from service.logs import log_event
from service.object_store import open_store
from service.service_metrics import ServiceMetrics
from service.settings import Settings
from service.training_process import Outcome, TrainingProcess, train_command

log = logging.getLogger(__name__)
IDLE_POLL_S = 2.0


class JobRunner:
    def __init__(self, settings: Settings, store: JobStore, metrics: ServiceMetrics, on_messages):
        self.settings, self.store, self.metrics = settings, store, metrics
        self.on_messages = on_messages  # wakes the outbox relay
        self.wake = asyncio.Event()
        self.stopping = False
        self.current: tuple[Job, TrainingProcess] | None = None
        self.stop_reason: str | None = None

    @property
    def heartbeat_s(self) -> float:
        return min(2.0, self.settings.lease_s / 3)

    async def run(self) -> None:
        while not self.stopping:
            try:
                job = await asyncio.to_thread(self.store.claim_next, self.settings.replica_id, self.settings.lease_s)
            except JobStoreUnavailable as exc:
                log.warning("job store unavailable: %s", exc.message)
                job = None
            if job is None:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), IDLE_POLL_S)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                await self.run_job(job)
            except Exception:  # a bug or the store going away: the lease expires and the job is retried
                log.exception("job %s: the worker failed around it", job.id)
                self.metrics.job_finished("worker-error", 0.0)
                await asyncio.sleep(IDLE_POLL_S)

    def cancel(self, job_id: str) -> None:
        """A cancel arrived: stop the job now if it runs here (other replicas see the flag)."""
        if self.current and self.current[0].id == job_id:
            self._stop("cancel")

    async def shutdown(self) -> None:
        """Stop picking work; let the running child checkpoint, then return."""
        self.stopping = True
        self.wake.set()
        if self.current:
            self._stop("shutdown")
            await self.current[1].stop(self.settings.shutdown_grace_s)

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None and self.current:
            self.stop_reason = reason
            asyncio.get_running_loop().create_task(self.current[1].stop(self.settings.shutdown_grace_s))

    async def run_job(self, job: Job) -> None:
        started = time.monotonic()
        self.stop_reason = None
        log_event(log, "claimed", job_id=job.id, attempt=job.attempt, dataset=f"{job.dataset_id}/v{job.dataset_version}")
        if job.cancel_requested:
            return await self.finish(job, Outcome(returncode=-1), "cancel", started)
        process = await TrainingProcess.start(await asyncio.to_thread(self.command, job), self.settings)
        self.current = (job, process)
        heartbeat = asyncio.create_task(self.heartbeat(job, started))
        try:
            last_progress = 0.0
            async for line in process.lines():
                last_progress = self.on_line(job, line, last_progress)
            outcome = await process.wait()
        finally:
            heartbeat.cancel()
            self.current = None
            process.signal(signal.SIGKILL)  # never leave a child running behind a failed worker
        await self.finish(job, outcome, self.stop_reason, started)

    def command(self, job: Job) -> list[str]:
        checkpoint_dir = self.settings.state_dir / "checkpoints" / job.id
        checkpoint = self.local_checkpoint(job)
        resume = checkpoint is not None and not job.export_only
        if (checkpoint_dir / "last.ckpt").is_file() and not job.export_only:
            checkpoint, resume = checkpoint_dir / "last.ckpt", True  # this job's own progress comes first
        return train_command(job_id=job.id, data_uri=job.dataset_uri, config=job.config,
                             checkpoint_dir=checkpoint_dir, export_only=job.export_only, checkpoint=checkpoint,
                             resume=resume)

    def local_checkpoint(self, job: Job) -> Path | None:
        """The job's checkpoint_uri as a local file (downloaded once when it lives in S3)."""
        uri = job.checkpoint_uri
        if uri is None:
            return None
        if not uri.startswith("s3://"):
            return Path(uri.removeprefix("file://"))
        local = self.settings.state_dir / "checkpoints" / job.id / "given.ckpt"
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            root, _, key = uri.rpartition("/")
            open_store(root, self.settings.s3.credentials()).download(key, local)
        return local

    def on_line(self, job: Job, line: dict, last_progress: float) -> float:
        event = line.get("event")
        if event == "started":
            self.publish(make_event(TrainingStarted(job_id=job.id, attempt=job.attempt,
                                                    mlflow_run_id=line.get("mlflow_run_id")), subject=f"job/{job.id}"))
        elif event == "progress" and time.monotonic() - last_progress >= self.settings.progress_interval_s:
            metrics = line.get("metrics", {})
            self.publish(make_event(TrainingProgress(
                job_id=job.id, epoch=line["epoch"], max_epochs=line["max_epochs"], eta_s=line.get("eta_s"),
                metrics={k: metrics.get(k) for k in ("train_loss", "val_loss", "val_median_error_m")}),
                subject=f"job/{job.id}"))
            return time.monotonic()
        return last_progress

    def publish(self, event) -> None:
        self.store.add_messages([outbox(event)], job_id=event.data.job_id)
        self.on_messages()

    async def heartbeat(self, job: Job, started: float) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if not await asyncio.to_thread(self.store.renew_lease, job.id, self.settings.replica_id,
                                           self.settings.lease_s):
                self._stop("lost-claim")
                return
            fresh = await asyncio.to_thread(self.store.get, job.id)
            if fresh is not None and fresh.cancel_requested:
                self._stop("cancel")
            elif time.monotonic() - started > self.settings.job_timeout_s:
                self._stop("timeout")

    async def finish(self, job: Job, outcome: Outcome, stop_reason: str | None, started: float) -> None:
        try:
            outcome_name = await asyncio.to_thread(self.record_outcome, job, outcome, stop_reason)
        except LostClaim:
            outcome_name = "lost-claim"  # another replica owns the job now; it will report it
        elapsed = time.monotonic() - started
        self.metrics.job_finished(outcome_name, elapsed)
        log_event(log, outcome_name, job_id=job.id, attempt=job.attempt, returncode=outcome.returncode,
                  elapsed_s=round(elapsed, 2))
        self.on_messages()
        self.wake.set()

    def record_outcome(self, job: Job, outcome: Outcome, stop_reason: str | None) -> str:
        me = self.settings.replica_id
        if stop_reason == "lost-claim":
            return "lost-claim"
        if stop_reason == "shutdown" or (stop_reason is None and outcome.returncode == EXIT_INTERRUPTED):
            self.store.requeue(job.id, me, not_before=utcnow())
            return "requeued"
        if stop_reason == "cancel":
            fresh = self.store.get(job.id)
            reason = (fresh and fresh.cancel_reason) or "cancelled"
            self.store.finish_cancelled(job.id, me, reason, [cancelled_message(job, reason)])
            return "cancelled"
        if stop_reason is None and outcome.returncode == 0:
            self.store.finish_succeeded(job.id, me, outcome.result, [outbox(registered_event(job, outcome.result))])
            return "succeeded"
        return self.record_failure(job, outcome, stop_reason)

    def record_failure(self, job: Job, outcome: Outcome, stop_reason: str | None) -> str:
        me = self.settings.replica_id
        if stop_reason == "timeout":
            failure = {"stage": "train", "error_type": "TimeLimitExceeded", "retryable": False,
                       "message": f"stopped after the {self.settings.job_timeout_s:.0f} s time limit"}
        else:
            failure = outcome.failure or {
                "stage": "train", "error_type": f"ExitCode{outcome.returncode}", "retryable": outcome.returncode < 0,
                "message": " | ".join(outcome.stderr_tail[-3:])[-1000:] or "the training process died"}
        retry = bool(failure.get("retryable")) and job.attempt < self.settings.max_attempts
        log_event(log, "job failure", job_id=job.id, attempt=job.attempt, will_retry=retry,
                  **{k: failure.get(k) for k in ("stage", "error_type", "message", "retryable")})
        event = make_event(TrainingFailed(job_id=job.id, stage=failure["stage"], error_type=failure["error_type"],
                                          message=str(failure["message"])[:2000], retryable=retry,
                                          attempt=job.attempt), subject=f"job/{job.id}")
        if retry:
            delay = self.settings.retry_backoff_s * 2 ** (job.attempt - 1) * random.uniform(0.8, 1.2)
            self.store.requeue(job.id, me, not_before=utcnow() + timedelta(seconds=delay), error=failure,
                               messages=[outbox(event)])
            return "retrying"
        self.store.finish_failed(job.id, me, failure, [outbox(event)])
        return "failed"


def registered_event(job: Job, result: dict):
    model, metrics = result["model"], result["metrics"]
    return make_event(ModelRegistered(
        job_id=job.id, model_name=model["model_name"], model_version=model["model_version"],
        aliases=model["aliases"], promoted=model["promoted"], model_uri=model["model_uri"], onnx=model["onnx"],
        card_uri=model["card_uri"], metrics={k: metrics[k] for k in ("median_error_m", "p90_error_m",
                                                                        "coverage_1sigma", "coverage_2sigma")},
        dataset={"id": job.dataset_id, "version": job.dataset_version, "uri": job.dataset_uri},
        mlflow_run_id=result["mlflow"]["run_id"]), subject=f"{model['model_name']}/{model['model_version']}")
