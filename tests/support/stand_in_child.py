"""A stand-in for the training child: a short script run by the real worker, the real process
handling and the real protocol, producing one fault on purpose (`send(message)` writes a protocol
message, see PRELUDE)."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap

from foundation.settings import Settings
from service.jobs.store import JobStatus, JobStore, JobStoreError
from service.metrics import ServiceMetrics
from service.runner.child_process import TrainingProcess
from service.runner.worker import JobRunner
from tests.support.jobs import VALID_RESULT


# What every stand-in child starts with: `send(message)` on the protocol pipe it was given.
PRELUDE = """
import json, os, sys
_protocol = os.fdopen(int(sys.argv[sys.argv.index("--protocol-fd") + 1]), "w", buffering=1)
def send(message):
    _protocol.write(json.dumps(message) + "\\n")
"""


def stand_in(script: str) -> list[str]:
    return [sys.executable, "-c", PRELUDE + textwrap.dedent(script)]


def result_line(result: dict = VALID_RESULT) -> str:
    return f"send({{'kind': 'result', 'result': {result!r}}})"


class StandInRunner(JobRunner):
    """The real worker, running `script` as the job's child instead of the training job."""

    script = ""

    async def start_child(self, spec):
        assert spec.registration_permit and spec.job_id  # what the real child gets
        return await TrainingProcess.start([], self.settings, stand_in(self.script))


def status_of(store: JobStore, job_id: str) -> JobStatus | None:
    """None while the store is away (a test's own fault)."""
    try:
        return store.read.get(job_id).status
    except JobStoreError:
        return None


def run_until_over(settings: Settings, store: JobStore, script: str, job_id: str, timeout_s: float = 60):
    """Run the worker until the job is finished; returns (job, its events by routing key)."""
    runner = StandInRunner(settings, store, ServiceMetrics(), on_messages=lambda: None)
    runner.script = script

    async def main():
        task = asyncio.create_task(runner.run())
        while status_of(store, job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
            assert not task.done(), task
            await asyncio.sleep(0.05)
        await runner.shutdown()
        await asyncio.wait_for(task, 10)

    asyncio.run(asyncio.wait_for(main(), timeout_s))
    events = [json.loads(m.body) for m in store.read.pending_messages(1000)]
    return store.read.get(job_id), [(e["type"].split(".")[-2], e["data"]) for e in events
                                    if e["data"].get("job_id") == job_id]


def final_failures(events):
    return [data for kind, data in events if kind == "failed"]
