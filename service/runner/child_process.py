"""The training child as a process: how it is started, and the protocol spoken with it.

The child is `python -m training --spec FILE --protocol-fd N` (the same recipe a person runs), or
a warm spare (`python -m training --warm ...`) that imported the training stack before its job
came and then reads its `JobSpec` as one line on stdin. Both speak `foundation.child_protocol`:
messages from the child arrive on a pipe of their own (fd N in the child); the child's stdout and
stderr are one stream of log text, kept only as the tail a failure report quotes.

The child is put in its own process group: SIGTERM goes to the child alone (it checkpoints; its
DataLoader workers must live until it has), SIGKILL to the whole group. It dies with the service
(PR_SET_PDEATHSIG): a `kill -9` of the service never leaves an orphaned trainer racing the job's
next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from foundation.child_protocol import (ChildMessage, Failed, Failure, JobSpec, MAX_MESSAGE_BYTES,
                                       PermitAnswer, ProtocolError, Result, SpareReady, Started, encode,
                                       parse_child_message)
from foundation.exit_codes import die_with_parent
from foundation.settings import SETTINGS_ENV, Settings

EXIT_NO_RESULT = 125  # ours, not the child's: it exited 0 but sent no Result
EXIT_POLL_S = 0.05
EXITED_READ_S = 0.5  # once the child has exited, how long its last buffered lines may take to read
LOG_TAIL_LINES = 20  # the last log lines kept for a failure's report
LOG_LINE_LIMIT = 1 << 20
CHILD_MODULE = [sys.executable, "-m", "training"]


def child_environment(settings: Settings) -> dict[str, str]:
    """Our environment without HEIMDALL_* variables, plus the settings model, serialised whole."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    return {**base, SETTINGS_ENV: settings.serialised(), "PYTHONUNBUFFERED": "1"}


@dataclass
class Outcome:
    returncode: int
    result: dict | None = None  # the child's Result
    failure: Failure | None = None  # the child's Failed, or why its end could not be read
    mlflow_run_id: str | None = None
    log_tail: list[str] = field(default_factory=list)


class TrainingProcess:
    """One running child: `messages()` yields what it says on the protocol pipe, `wait()` gives the outcome."""

    def __init__(self, proc: asyncio.subprocess.Process, protocol: asyncio.StreamReader):
        self.proc, self.protocol = proc, protocol
        self.outcome = Outcome(returncode=-1)
        self._drain = asyncio.get_running_loop().create_task(self._keep_log_tail())
        self._reading: asyncio.Future | None = None

    @classmethod
    async def start(cls, arguments: list[str], settings: Settings,
                    command: list[str] | None = None) -> "TrainingProcess":
        """`command` + `arguments` + `--protocol-fd N`, in its own process group, dying with us."""
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *(command or CHILD_MODULE), *arguments, "--protocol-fd", str(write_fd),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                pass_fds=(write_fd,), start_new_session=True, preexec_fn=die_with_parent, limit=LOG_LINE_LIMIT,
                env=child_environment(settings))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the child holds the only writer: its exit ends our reads
        reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb"))
        return cls(proc, reader)

    @classmethod
    async def cold(cls, spec_file: Path, settings: Settings) -> "TrainingProcess":
        return await cls.start(["--spec", str(spec_file)], settings)

    async def _keep_log_tail(self) -> None:
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # over the limit: asyncio dropped it from the buffer
                self._note("[a log line over 1 MiB was skipped]")
                continue
            if not raw:
                return
            self._note(raw.decode(errors="replace").rstrip())

    def _note(self, text: str) -> None:
        self.outcome.log_tail = (self.outcome.log_tail + [text])[-LOG_TAIL_LINES:]

    async def messages(self):
        """The child's protocol messages until it closes the pipe. A line that is not a valid
        message is noted in the log tail as what it is, and changes nothing."""
        while True:
            try:
                line = await self._next_protocol_line()
            except ValueError:
                self._note("[protocol: a line over the limit was skipped]")
                continue
            if not line:
                return
            try:
                message = parse_child_message(line)
            except ProtocolError as exc:
                self._note(f"[protocol: {exc}]")
                continue
            self._record(message)
            yield message

    async def _next_protocol_line(self) -> bytes:
        """The next line, or b"" once the child has exited and its last lines are read. Not EOF alone:
        the child's own children (DataLoader workers) inherit the pipe and may outlive it a while."""
        if self._reading is None:  # a read left pending by a cancelled reader (the spare's watch) goes on
            self._reading = asyncio.ensure_future(self.protocol.readline())
        read, exited = self._reading, asyncio.ensure_future(self.exit_code())
        try:
            await asyncio.wait({read, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():  # it has exited: what it wrote is already in the pipe
                await asyncio.wait({read}, timeout=EXITED_READ_S)
        finally:
            exited.cancel()
        if not read.done():
            return b""
        self._reading = None
        return read.result()

    def _record(self, message: ChildMessage) -> None:
        if isinstance(message, Failed):
            self.outcome.failure = message.failure
        elif isinstance(message, Result):
            self.outcome.result = message.result
        elif isinstance(message, Started):
            self.outcome.mlflow_run_id = message.mlflow_run_id

    async def until_ready(self) -> bool:
        """A warm spare's imports are done (SpareReady); False when it ended first."""
        async for message in self.messages():
            if isinstance(message, SpareReady):
                return True
        return False

    async def send_spec(self, spec: JobSpec) -> None:
        await self._write(encode(spec))

    async def answer_permit(self, request_id: str, granted: bool) -> None:
        await self._write(encode(PermitAnswer(request_id=request_id, granted=granted)))

    async def _write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):  # the child is gone; its exit code tells the rest
            pass

    async def wait(self) -> Outcome:
        async for _ in self.messages():  # whatever is left on the pipe
            pass
        self.outcome.returncode = await self.exit_code()
        if self._reading is not None:
            self._reading.cancel()
        try:  # the log text it wrote before exiting, not what its children may still write
            await asyncio.wait_for(asyncio.shield(self._drain), EXITED_READ_S)
        except asyncio.TimeoutError:
            self._drain.cancel()
        if self.outcome.returncode == 0 and self.outcome.result is None:
            self.outcome.returncode = EXIT_NO_RESULT
            self.outcome.failure = Failure(stage="register", error_type="NoResult", retryable=True,
                                           message="the job exited 0 but sent no result")
        return self.outcome

    async def exit_code(self) -> int:
        """The child's exit status as soon as it has exited. Not `proc.wait()`: in Python 3.11 that also
        waits for every pipe to close, and the child's own children (DataLoader workers) inherit them."""
        while self.proc.returncode is None:
            await asyncio.sleep(EXIT_POLL_S)
        return self.proc.returncode

    def signal(self, signum: int) -> None:
        """SIGKILL to the whole group (DataLoader workers too); any other signal to the child alone."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                (os.killpg if signum == signal.SIGKILL else os.kill)(self.proc.pid, signum)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to the child (it checkpoints at the next batch), then SIGKILL after `grace_s`."""
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.exit_code(), grace_s)
        except asyncio.TimeoutError:
            self.signal(signal.SIGKILL)
            await self.exit_code()
