"""The worker around a job, against a real job store (SQLite file) and real child processes.

The child here is a small stand-in script instead of `python -m training`, so each fault
(a huge log line, exit 3 forever, a result that is not a valid event, a missing checkpoint) is
produced on purpose and quickly; the worker, the job store, the process handling and the child
protocol are the real ones. A stand-in speaks the protocol with `send(message)` (PRELUDE). Every
job must end exactly once, with a final event that says why.
"""

from __future__ import annotations

import asyncio
import json
import signal
import textwrap
from datetime import timedelta

import pytest

from service.jobs.events import abandoned_failure, failed_message
from service.jobs.store import JobStatus, JobStore, utcnow
from service.metrics import ServiceMetrics
from foundation.settings import S3Settings, Settings
from foundation.child_protocol import Started, StopReason
from service.runner.child_process import Outcome, TrainingProcess
from service.runner.worker import JobRunner
from tests.support.jobs import VALID_RESULT, accept
from tests.support.stand_in_child import (StandInRunner, final_failures, result_line, run_until_over,
                                         stand_in)


def test_a_child_that_keeps_exiting_3_ends_after_max_attempts(settings, store):
    job = accept(store)
    over, events = run_until_over(settings, store, "import sys; sys.exit(3)", job.id)
    assert over.status is JobStatus.FAILED and over.attempt == 3
    failed = final_failures(events)
    assert [(f["attempt"], f["retryable"]) for f in failed] == [(1, True), (2, True), (3, False)]
    assert failed[-1]["error_type"] == "Interrupted"


def test_a_result_that_is_not_a_valid_event_is_a_final_failure_not_a_success(settings, store):
    job = accept(store)
    result = {**VALID_RESULT, "metrics": {**VALID_RESULT["metrics"], "median_error_m": None}}
    over, events = run_until_over(settings, store, result_line(result), job.id)
    assert over.status is JobStatus.FAILED
    failed = final_failures(events)
    assert len(failed) == 1 and failed[0]["error_type"] == "InvalidResult" and not failed[0]["retryable"]
    assert failed[0]["stage"] == "register"
    assert not [kind for kind, _ in events if kind == "registered"]


def test_a_log_line_over_one_mebibyte_is_skipped_and_the_job_still_succeeds(settings, store):
    job = accept(store)
    script = f"""
        sys.stderr.write("x" * (3 << 20) + "\\n")
        send({{"kind": "started", "mlflow_run_id": "r1"}})
        {result_line()}
    """
    over, events = run_until_over(settings, store, script, job.id)
    assert over.status is JobStatus.SUCCEEDED
    assert [kind for kind, _ in events].count("started") == 1 and [k for k, _ in events].count("registered") == 1


def test_an_export_of_a_missing_checkpoint_object_fails_once_at_the_data_stage(settings, store, s3_server):
    settings = settings.model_copy(update={"s3": S3Settings(
        endpoint_url=s3_server.endpoint_url, access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key)})
    job = accept(store, export_only=True, checkpoint_uri="s3://heimdall-models/no-such/last.ckpt")
    over, events = run_until_over(settings, store, "print('never runs')", job.id)
    assert over.status is JobStatus.FAILED and over.attempt == 1
    failed = final_failures(events)
    assert len(failed) == 1 and failed[0]["stage"] == "data" and "no such object" in failed[0]["message"]


def test_a_job_whose_lease_expired_on_its_last_attempt_is_failed_not_reclaimed(store):
    job = accept(store)
    for attempt in range(1, 4):  # three workers that died mid-job (kill -9): a lease of 0 s has run out at
        # once on the database's clock, which leases are kept by (a replica's own `now` plays no part)
        claimed = store.claim_next(f"dead-{attempt}", 0.0, now=utcnow() + timedelta(seconds=10 * attempt),
                                   max_attempts=3)
        assert claimed.id == job.id and claimed.attempt == attempt
    abandoned = store.claim_next("alive", 1.0, now=utcnow() + timedelta(seconds=40), max_attempts=3,
                                 abandoned_message=lambda j: failed_message(j, abandoned_failure(j), retryable=False))
    assert abandoned is None
    over = store.read.get(job.id)
    assert over.status is JobStatus.FAILED and over.error["error_type"] == "WorkerLost"
    failed = [json.loads(m.body)["data"] for m in store.read.pending_messages(100) if m.routing_key == "training.failed"]
    assert [(f["attempt"], f["retryable"], f["error_type"]) for f in failed] == [(3, False, "WorkerLost")]


def test_a_child_that_lost_its_claim_is_denied_the_registration_permit(settings, store, tmp_path):
    job = accept(store)
    answer = tmp_path / "answer"
    script = f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the heartbeat's stop must not beat the permit
        from service.jobs.store import JobStore, utcnow
        from datetime import timedelta
        store = JobStore({settings.job_store_url!r})
        time.sleep(0.5)
        # another replica claims the job after our lease "expired" (we were frozen past it)
        job = store.read.get({job.id!r})
        with store.transaction(write=True) as conn:
            from service.jobs.tables import jobs
            import sqlalchemy as sa
            conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(claimed_by="other-replica"))
        send({{"kind": "permit-request", "request_id": "p1"}})
        open({str(answer)!r}, "w").write(sys.stdin.readline().strip())
        sys.exit(1)
    """
    runner = StandInRunner(settings, store, ServiceMetrics(), on_messages=lambda: None)
    runner.script = script

    async def main():
        claimed = await runner.claim()
        await runner.run_guarded(claimed)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert json.loads(answer.read_text()) == {"request_id": "p1", "granted": False}
    assert store.read.get(job.id).claimed_by == "other-replica"  # the stale worker recorded nothing


@pytest.mark.parametrize("late", [StopReason.CANCEL, StopReason.TIMEOUT])
def test_a_cancel_or_timeout_after_the_child_finished_is_still_a_success(settings, store, late):
    accept(store)
    job = store.claim_next(settings.replica_id, 30.0)
    runner = JobRunner(settings, store, ServiceMetrics(), on_messages=lambda: None)
    assert runner.recorder.record_outcome(job, Outcome(returncode=0, result=VALID_RESULT), late) == "succeeded"
    assert store.read.get(job.id).status is JobStatus.SUCCEEDED
    kinds = [m.routing_key for m in store.read.pending_messages(100)]
    assert kinds.count("model.registered") == 1 and "training.cancelled" not in kinds


def test_a_job_claimed_while_shutting_down_goes_back_to_the_queue_unstarted(settings, store):
    class ShutdownDuringClaim(StandInRunner):
        script = "raise SystemExit('must not run')"

        async def claim(self):
            claimed = await super().claim()
            self.stopping = True  # SIGTERM arrived while the claim was in flight
            return claimed

    job = accept(store)
    asyncio.run(asyncio.wait_for(ShutdownDuringClaim(settings, store, ServiceMetrics(), lambda: None).run(), 30))
    again = store.read.get(job.id)
    assert again.status is JobStatus.QUEUED and again.claimed_by is None
    assert [m.routing_key for m in store.read.pending_messages(100)] == ["training.accepted"]


def test_sigterm_reaches_the_child_alone_so_its_dataloader_workers_live_to_see_the_checkpoint(tmp_path, settings):
    marker = tmp_path / "grandchild-got-sigterm"
    script = f"""
        import signal, subprocess, time
        worker = subprocess.Popen([sys.executable, "-c",
            "import signal, time, pathlib\\n"
            "signal.signal(signal.SIGTERM, lambda *a: pathlib.Path({str(marker)!r}).write_text('x'))\\n"
            "print('ready', flush=True)\\n"
            "time.sleep(60)"], stdout=subprocess.PIPE)
        worker.stdout.readline()
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))  # before "started": the parent signals on it
        send({{"kind": "started"}})
        time.sleep(60)
    """

    async def main():
        process = await TrainingProcess.start([], settings, stand_in(script))
        async for message in process.messages():
            if isinstance(message, Started):
                await process.stop(10)
                break
        outcome = await process.wait()
        process.signal(signal.SIGKILL)  # what the worker does after every job: the group goes
        return outcome

    outcome = asyncio.run(asyncio.wait_for(main(), 60))
    assert outcome.returncode == 3
    assert not marker.exists()


def test_progress_is_rate_limited_to_one_event_per_interval(settings, store):
    settings = settings.model_copy(update={"progress_interval_s": 30.0})
    job = accept(store)
    script = f"""
        for epoch in range(1, 21):
            send({{"kind": "progress", "epoch": epoch, "max_epochs": 20}})
        {result_line()}
    """
    over, events = run_until_over(settings, store, script, job.id)
    assert over.status is JobStatus.SUCCEEDED
    assert [data["epoch"] for kind, data in events if kind == "progress"] == [1]


def test_a_job_over_its_time_limit_is_stopped_and_fails_once_for_good(settings, store):
    settings = settings.model_copy(update={"job_timeout_s": 1.0})
    job = accept(store)
    script = """
        import signal, time
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))  # checkpoints, as train does
        time.sleep(60)
    """
    over, events = run_until_over(settings, store, script, job.id)
    assert over.status is JobStatus.FAILED and over.attempt == 1
    failed = final_failures(events)
    assert [(f["error_type"], f["retryable"]) for f in failed] == [("TimeLimitExceeded", False)]


def test_a_child_that_still_holds_the_claim_is_granted_the_permit_and_registers(settings, store):
    job = accept(store)
    script = f"""
        send({{"kind": "permit-request", "request_id": "p1"}})
        if json.loads(sys.stdin.readline()) != {{"request_id": "p1", "granted": True}}:
            sys.exit(1)
        {result_line()}
    """
    over, events = run_until_over(settings, store, script, job.id)
    assert over.status is JobStatus.SUCCEEDED
    assert [kind for kind, _ in events].count("registered") == 1


# ---------------------------------------------------------------- the warm spare

STAND_IN_SPARE = """
    import time
    folder, import_s = sys.argv[1], float(sys.argv[2])
    assert "--warm" in sys.argv  # what the real spare gets
    with open(os.path.join(folder, f"spare-{os.getpid()}"), "w") as out:
        out.write(str(time.time()))
    time.sleep(import_s)  # the training stack's imports
    send({"kind": "spare-ready"})
    spec = json.loads(sys.stdin.readline())
    with open(os.path.join(folder, f"job-{os.getpid()}"), "w") as out:
        out.write(json.dumps({"started": time.time(), "job_id": spec["job_id"]}))
    time.sleep(1.5)  # the job
    with open(os.path.join(folder, f"job-{os.getpid()}"), "a") as out:
        out.write("\\n" + str(time.time()))
    send({"kind": "result", "result": RESULT})
"""


def run_with_stand_in_spares(settings: Settings, store: JobStore, folder, import_s: float, job_id: str,
                             spares: int) -> ServiceMetrics:
    """The real worker and WarmSpare, each spare a stand-in that records when it started and ran its job.
    Runs until the job is over and `spares` spares have started, the last one ready (the
    `heimdall_training_warm_spare_ready` gauge), then shuts down."""
    script = textwrap.dedent(STAND_IN_SPARE).replace("RESULT", repr(VALID_RESULT))
    metrics = ServiceMetrics()
    runner = JobRunner(settings.model_copy(update={"warm_spare": True}), store, metrics, on_messages=lambda: None,
                       spare_command=[*stand_in(script), str(folder), str(import_s)])

    async def main():
        task = asyncio.create_task(runner.run())
        while store.read.get(job_id).status is not JobStatus.SUCCEEDED or len(list(folder.glob("spare-*"))) < spares:
            assert not task.done(), task
            await asyncio.sleep(0.05)
        while b"heimdall_training_warm_spare_ready 1.0" not in metrics.render():  # the new spare's imports
            await asyncio.sleep(0.05)
        await runner.shutdown()
        await asyncio.wait_for(task, 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    return metrics


def spare_times(folder) -> dict[int, float]:
    return {int(p.name.split("-")[1]): float(p.read_text()) for p in folder.glob("spare-*")}


def test_the_next_spare_starts_when_the_job_has_ended_not_while_it_runs(settings, store, tmp_path):
    job = accept(store)
    metrics = run_with_stand_in_spares(settings, store, tmp_path, 0.2, job.id, spares=2)
    (ran_in,) = [int(p.name.split("-")[1]) for p in tmp_path.glob("job-*")]  # one job, in one spare
    started, ended = tmp_path.joinpath(f"job-{ran_in}").read_text().splitlines()
    assert json.loads(started)["job_id"] == job.id
    spares = spare_times(tmp_path)
    (next_spare,) = [t for pid, t in spares.items() if pid != ran_in]
    assert next_spare >= float(ended)  # not started during the job, where it competed for the cores
    assert b"heimdall_training_warm_spare_ready 0.0" in metrics.render()  # closed at shutdown


def test_a_job_that_arrives_while_the_spare_is_importing_runs_in_that_spare(settings, store, tmp_path):
    job = accept(store)  # queued before the worker and its first spare start
    run_with_stand_in_spares(settings, store, tmp_path, 2.0, job.id, spares=2)
    spares = spare_times(tmp_path)
    first = min(spares, key=spares.get)
    started = json.loads(tmp_path.joinpath(f"job-{first}").read_text().splitlines()[0])["started"]
    assert started >= spares[first] + 2.0  # it waited for the imports in the spare, no cold child was started
    assert len(list(tmp_path.glob("job-*"))) == 1


def test_a_child_that_stops_saying_anything_is_killed_and_the_job_retried(settings, store):
    """SIGSTOP mid-fit: no heartbeat for child_silence_s. Not the 6 h time limit, not a final failure."""
    settings = settings.model_copy(update={"child_silence_s": 6.0, "max_attempts": 2})
    job = accept(store)
    script = """
        import signal
        send({"kind": "started"})
        send({"kind": "heartbeat"})
        os.kill(os.getpid(), signal.SIGSTOP)
    """
    over, events = run_until_over(settings, store, script, job.id, timeout_s=90)
    failed = final_failures(events)
    assert [(f["error_type"], f["retryable"], f["attempt"]) for f in failed] == \
        [("ChildSilent", True, 1), ("ChildSilent", False, 2)]
    assert over.status is JobStatus.FAILED


def test_the_spare_ready_gauge_falls_when_an_idle_spare_dies(settings, store):
    """The spare says it is ready, then exits before any job came (OOM, say)."""
    metrics = ServiceMetrics()
    runner = JobRunner(settings.model_copy(update={"warm_spare": True}), store, metrics, on_messages=lambda: None,
                       spare_command=stand_in('send({"kind": "spare-ready"})'))

    async def gauge_becomes(ready: bool):
        while (b"heimdall_training_warm_spare_ready 1.0" in metrics.render()) is not ready:
            await asyncio.sleep(0.02)

    async def main():
        await runner.spare.ensure()
        await asyncio.wait_for(gauge_becomes(True), 30)
        await asyncio.wait_for(gauge_becomes(False), 30)  # it stayed at 1 for ever before
        await runner.spare.close()

    asyncio.run(main())
