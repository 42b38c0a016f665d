"""The warm spare: one training child started ahead of its job.

It has imported torch, Lightning and MLflow by the time a job arrives, and runs that one job
only: every job still gets a fresh process of its own. The worker starts the next spare when a
job has ended, not while it runs: on a few cores a spare's imports slow the running job down by
more than they save the next one. A job that arrives while the spare is still importing takes it
anyway: it is ahead of a cold start. `on_ready(True)` once the spare says its imports are done
(`SpareReady`), `on_ready(False)` when it is taken or has died.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from foundation.child_protocol import JobSpec
from foundation.settings import Settings
from service.runner.child_process import TrainingProcess


class WarmSpare:
    def __init__(self, settings: Settings, *, command: list[str] | None = None, on_ready=lambda ready: None):
        self.settings, self.on_ready = settings, on_ready
        self.command = command  # None: `python -m training`; a test's stand-in otherwise
        self.process: TrainingProcess | None = None
        self._watch: asyncio.Task | None = None

    async def ensure(self) -> None:
        if self.process is None or self.process.proc.returncode is not None:
            self.process = await TrainingProcess.start(["--warm"], self.settings, self.command)
            self._watch = asyncio.get_running_loop().create_task(self._until_ready(self.process))

    async def _until_ready(self, process: TrainingProcess) -> None:
        ready = await process.until_ready()
        self.on_ready(ready)
        if ready:
            await process.exit_code()  # an idle spare that dies is no longer ready
            self.on_ready(False)

    async def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()  # a cancelled readline leaves the buffered bytes for the job's reader
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def take(self, spec: JobSpec) -> TrainingProcess:
        await self.ensure()
        await self._stop_watching()
        process, self.process = self.process, None
        self.on_ready(False)
        await process.send_spec(spec)
        return process

    async def close(self) -> None:
        await self._stop_watching()
        self.on_ready(False)
        if self.process is not None:
            self.process.signal(signal.SIGKILL)
            await self.process.exit_code()
