"""How a job attempt's end is recorded, against a real job store (SQLite file) and stand-in children:
an outcome is kept until the store takes it, and a graceful hand-back uses up no attempt."""

from __future__ import annotations

import asyncio

from foundation.settings import Settings
from service.jobs.store import JobStatus, JobStore
from service.metrics import ServiceMetrics
from tests.support.jobs import accept
from tests.support.stand_in_child import StandInRunner, final_failures, result_line, run_until_over


def test_a_store_error_while_recording_success_on_the_last_attempt_still_ends_in_model_registered(settings, store):
    """The child registered a model; the store is away (its jobs table gone) when the worker records
    it, on the job's last attempt, and back 3 s later. The outcome waits for it."""
    settings = settings.model_copy(update={"max_attempts": 1})
    job = accept(store)
    database = settings.job_store_url.removeprefix("sqlite:///")
    script = f"""
        import sqlite3, subprocess
        renamed = sqlite3.connect({database!r}, isolation_level=None)
        renamed.execute("ALTER TABLE jobs RENAME TO jobs_away")
        subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time; time.sleep(3); "
                          "sqlite3.connect(sys.argv[1], isolation_level=None).execute("
                          "'ALTER TABLE jobs_away RENAME TO jobs')", {database!r}], start_new_session=True)
        {result_line()}
    """
    over, events = run_until_over(settings, store, script, job.id)
    assert over.status is JobStatus.SUCCEEDED and not final_failures(events)
    assert [kind for kind, _ in events].count("registered") == 1


def test_a_job_handed_back_at_shutdown_keeps_its_attempt(settings: Settings, store: JobStore):
    """Three rolling deploys during one job (max_attempts 3) and the job still has all its attempts."""
    job = accept(store)
    script = """
        import signal, time
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))  # checkpoints, as the real child does
        send({"kind": "started"})
        time.sleep(60)
    """
    for deploy in range(3):
        runner = StandInRunner(settings, store, ServiceMetrics(), on_messages=lambda: None)
        runner.script = script

        async def run_then_shut_down():
            task = asyncio.create_task(runner.run())
            while runner.current is None:  # the child runs: a rolling deploy stops this replica now
                await asyncio.sleep(0.05)
            await runner.shutdown()
            await asyncio.wait_for(task, 30)

        asyncio.run(asyncio.wait_for(run_then_shut_down(), 60))
        again = store.read.get(job.id)
        assert (again.status, again.attempt) == (JobStatus.QUEUED, 0), deploy


def test_a_cancel_that_arrives_after_the_child_sent_its_result_still_ends_in_model_registered(settings, store):
    """The real race: the child has registered and sent its Result; a cancel arrives before it exits,
    and the worker's SIGTERM makes it exit 3. The model exists: the job succeeded."""
    job = accept(store)
    script = f"""
        import signal, time
        from service.jobs.events import cancelled_message
        from service.jobs.store import JobStore
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
        {result_line()}
        JobStore({settings.job_store_url!r}).request_cancel({job.id!r}, "too late", cancelled_message)
        time.sleep(60)  # until the worker's heartbeat sees the cancel and stops us
    """
    over, events = run_until_over(settings, store, script, job.id)
    assert over.status is JobStatus.SUCCEEDED
    kinds = [kind for kind, _ in events]
    assert kinds.count("registered") == 1 and "cancelled" not in kinds
