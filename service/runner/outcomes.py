"""How a job attempt's end is recorded: success, a hand-back at shutdown, a cancel, or a failure
that is retried with backoff up to `max_attempts` and then final. Each is one job-store transition
with its event (model.registered, training.cancelled, training.failed) in the same transaction.
"""

from __future__ import annotations

import logging
import random

from pydantic import ValidationError

from foundation.child_protocol import Failure, StopReason
from foundation.exit_codes import EXIT_INTERRUPTED
from foundation.logs import log_event
from foundation.settings import Settings
from service.jobs.events import cancelled_message, failed_message, succeeded_messages
from service.jobs.store import Job, JobStore
from service.metrics import AttemptEnd
from service.runner.child_process import Outcome

log = logging.getLogger(__name__)


class OutcomeRecorder:
    """Writes how a job attempt ended: the job store's transition and its event, in one transaction."""

    def __init__(self, settings: Settings, store: JobStore):
        self.settings, self.store = settings, store

    def record_outcome(self, job: Job, outcome: Outcome, stop_reason: StopReason | None) -> AttemptEnd:
        me = self.settings.replica_id
        if stop_reason is StopReason.LOST_CLAIM:
            return AttemptEnd.LOST_CLAIM
        if outcome.result is not None:  # registered and said so: a late cancel or its SIGTERM changes nothing
            try:
                messages = succeeded_messages(job, outcome.result)
            except (ValidationError, KeyError, TypeError) as exc:
                return self.record_failure(job, Failure(
                    stage="register", error_type="InvalidResult", retryable=False,
                    message=f"the job's result is not a valid model.registered: {exc}"))
            self.store.finish_succeeded(job.id, me, outcome.result, messages)
            return AttemptEnd.SUCCEEDED
        if stop_reason is StopReason.SHUTDOWN:
            self.store.requeue(job.id, me, keep_attempt=True)
            return AttemptEnd.REQUEUED
        if stop_reason is StopReason.CANCEL:
            fresh = self.store.read.get(job.id)
            reason = (fresh and fresh.cancel_reason) or "cancelled"
            self.store.finish_cancelled(job.id, me, reason, [cancelled_message(job, reason)])
            return AttemptEnd.CANCELLED
        return self.record_failure(job, self.failure_of(outcome, stop_reason))

    def failure_of(self, outcome: Outcome, stop_reason: StopReason | None) -> Failure:
        if stop_reason is StopReason.TIMEOUT:
            return Failure(stage="train", error_type="TimeLimitExceeded", retryable=False,
                           message=f"stopped after the {self.settings.job_timeout_s:.0f} s time limit")
        if stop_reason is StopReason.SILENT:
            return Failure(stage="train", error_type="ChildSilent", retryable=True,
                           message=f"the training process said nothing for {self.settings.child_silence_s:.0f} s "
                                   "(stopped, deadlocked, or stuck before its job started); killed")
        if outcome.returncode == EXIT_INTERRUPTED:  # interrupted, but not by us: retried like a crash
            return Failure(stage="train", error_type="Interrupted", retryable=True,
                           message="the training process was stopped by SIGTERM that the service did not send")
        return outcome.failure or Failure(
            stage="train", error_type=f"ExitCode{outcome.returncode}", retryable=outcome.returncode < 0,
            message=" | ".join(outcome.log_tail[-3:])[-1000:] or "the training process died")

    def record_failure(self, job: Job, failure: Failure) -> AttemptEnd:
        me = self.settings.replica_id
        retry = failure.retryable and job.attempt < self.settings.max_attempts
        log_event(log, "job failure", job_id=job.id, attempt=job.attempt, will_retry=retry, **failure.model_dump())
        message = failed_message(job, failure, retryable=retry)
        if retry:
            delay = self.settings.retry_backoff_s * 2 ** (job.attempt - 1) * random.uniform(0.8, 1.2)
            self.store.requeue(job.id, me, delay_s=delay, error=failure.model_dump(),
                               messages=[message])
            return AttemptEnd.RETRYING
        self.store.finish_failed(job.id, me, failure.model_dump(), [message])
        return AttemptEnd.FAILED
