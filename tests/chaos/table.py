"""The chaos table: every fault, its label, how many trials a full run gives it, and what must hold.

The first rows are issue 8's (`faults.py`, `messages.py`); the rows after them reach the windows of
issue 20 (`child_faults.py`, `store_faults.py`, `intake_faults.py`). Every trial is also audited alike
(`lab.audit`): every accepted job ends once, one model version per key, one `model.registered` per job,
no outbox event missing from the bus, no job left queued or running.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Callable

from tests.chaos.child_faults import cancel_in_register, child_stopped, disk_full, register_window
from tests.chaos.faults import (close_connections, dependency_down, freeze_replica, kill_9, pg_terminate,
                                rabbit_restart, sigterm_resume)
from tests.chaos.intake_faults import full_queue, late_older, unstorable
from tests.chaos.messages import fuzz, fuzz_count, storm, unroutable
from tests.chaos.store_faults import (STORE_AWAY_S, clock_ahead, purge_while_queued, stalled_store, store_at_success,
                                     store_away)


@dataclass(frozen=True)
class Fault:
    name: str
    label: str
    trials: int
    must_hold: str
    run: Callable
    unit: str = ""  # what one trial is, when it is not one job

    def trials_label(self, n: int, scale: float) -> str:
        return self.unit.format(fuzz=fuzz_count(scale)) if self.unit else str(n)


ONE_VERSION = "the job ends once; its key has one version, `registration: complete`; one `model.registered`"

FAULTS = [
    Fault("kill-9", "`kill -9` of `serve` (claim, fit, export, register, outbox publish)", 10,
          "every job ends once; one version; one `model.registered` id", kill_9),
    Fault("sigterm", "SIGTERM mid-fit, then restart", 3, "resumes from the checkpointed epoch (asserted)",
          sigterm_resume),
    Fault("close-connections", "`rabbitmqctl close_all_connections` (vhost) mid-job / mid-publish", 5,
          "no event lost; robust connections recover", close_connections),
    Fault("rabbit-restart", "RabbitMQ `stop_app` / `start_app` while a job runs", 2,
          "events decided during the outage published after it, same ids", rabbit_restart),
    Fault("pg-terminate", "`pg_terminate_backend` mid-job, a trigger during it", 3,
          "the job ends once; no trigger dead-lettered", pg_terminate),
    Fault("mlflow-down", "`mlflow server` down during register (back / stays down)", 2,
          "retried with backoff; after `max_attempts` one final `training.failed`", dependency_down("mlflow")),
    Fault("s3-down", "S3 server down during upload (back / stays down)", 2,
          "retried with backoff; after `max_attempts` one final `training.failed`", dependency_down("s3")),
    Fault("freeze", "a replica `SIGSTOP`ped past its lease, then `SIGCONT`", 3,
          "the stale replica stops without registering", freeze_replica),
    Fault("fuzz", "fuzzed messages (hypothesis)", 1,
          "each dead-lettered with a reason; ready throughout; nothing else published", fuzz, "{fuzz:,} msgs"),
    Fault("storm", "1,000 duplicates of one `dataset.ready` (half same id), 2 replicas", 1,
          "one job, one model version", storm, "1 storm"),
    Fault("unroutable", "`model.registered` unroutable, then a queue is bound", 1,
          "the event arrives once the queue exists", unroutable),
    Fault("kill-9-register", "`kill -9` of the training child between `create_model_version` and its result "
          "(aimed: frozen the moment the version exists / its model.json is stored / it is complete)", 6, ONE_VERSION,
          register_window(signal.SIGKILL)),
    Fault("sigterm-register", "SIGTERM of the training child in the same window (aimed alike)", 3, ONE_VERSION,
          register_window(signal.SIGTERM)),
    Fault("cancel-register", "`training.cancel` of a job whose child is in the same window (aimed alike; serve "
          "sends the SIGTERM)", 3, "the job ends once: registered (one complete version), or cancelled with no "
          "version for its key and the champion alias untouched", cancel_in_register),
    Fault("store-away", f"the job store's database refusing connections for {STORE_AWAY_S / 60:.1f} min (past the "
          "old redelivery budget; the server stays up), a job running and 3 triggers arriving", 1,
          "every trigger becomes a job (or maps to one); none dead-lettered; every job ends once", store_away),
    Fault("store-at-success", "the job store refusing connections from the moment the model version is complete "
          "until 5-20 s after the child exits, on the job's last attempt (`max_attempts` 1)", 2,
          "recorded once the store answers: `model.registered`, no `training.failed`", store_at_success),
    Fault("store-stall", "a database that accepts connections and never answers (stalling proxy, 15-30 s) "
          "mid-job, a trigger during it", 2,
          "`/readyz` unready during, ready after; the job ends once; the trigger is accepted", stalled_store),
    Fault("queue-full", "a downstream queue on `model.registered` at `x-max-length` 1 with `reject-publish`, "
          "2 jobs, then drained", 1, "the other events keep flowing; once drained, each `model.registered` "
          "reaches that queue", full_queue),
    Fault("child-stop", "the training child `SIGSTOP`ped mid-fit (`child_silence_s` 8)", 2,
          "killed after 8 s of silence, retried (`ChildSilent`, retryable), ends once", child_stopped),
    Fault("purge-resume", "the retention purge while a resume of a 60-day-old job is queued", 1,
          "the checkpoint is kept and the resume goes on past epoch 3; purged once the resume is done",
          purge_while_queued),
    Fault("late-older", "a late `dataset.ready` v1 after v2 (v2 succeeded / v2 running)", 2,
          "no job for v1; the champion stays on v2's model", late_older),
    Fault("disk-full", "the cache / state folder on a full 64 KiB tmpfs; space back before the retry", 2,
          "a retryable `StorageFull` (not a permanent `train` failure); registered once space is back", disk_full),
    Fault("unstorable", "ids over 255 characters and NULs (id, source, subject, uri, reason, job_id) "
          "PostgreSQL cannot store; 2 ids of 255 characters kept", 1,
          "each refusal dead-lettered with its reason at once, none requeued; the 2 controls train", unstorable,
          "10 msgs"),
    Fault("clock-ahead", "a replica whose clock is 10-20 × `lease_s` ahead (libfaketime) joins while a job runs",
          2, "each job claimed once, no failure: leases are on the database's clock", clock_ahead),
]
