"""The training job as a child process: its command line, its environment, and its output.

The child is `python -m cli.main train ... --json`: the same entry point a person runs; or a
warm spare (`training.warm_spare`) that imported the training stack before its job came and then
runs exactly that command line in-process.
It reads the settings from the environment we hand it, writes JSON log lines on stderr
(progress, the MLflow run id, the failure) and one JSON result on stdout.
It is put in its own process group: SIGTERM goes to the child alone (it checkpoints; its
DataLoader workers must live until it has), SIGKILL to the whole group. It dies with the service
(PR_SET_PDEATHSIG): a `kill -9` of the service never leaves an orphaned trainer racing the job's
next attempt. Before it registers a model it asks for a permit (a `PERMIT_REQUEST` log line) and
waits for the answer on stdin: the service grants it only while it still holds the job's lease,
so a replica that lost its claim never registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from foundation.exit_codes import EXIT_OK
from foundation.registration_permit import PERMIT_DENIED, PERMIT_GRANTED
from foundation.settings import Settings

EXIT_UNREADABLE = 125  # ours, not the child's: it exited 0 but its result could not be read

STDERR_LINE_LIMIT = 1 << 20
STDERR_TAIL_LINES = 20  # the last stderr lines kept for a failure's report
SPARE_READY = json.dumps({"event": "spare ready"})  # a warm spare's stderr line once its imports are done
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec (Linux)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as HEIMDALL_* variables, so the child builds exactly the same object."""
    env = {"HEIMDALL_STATE_DIR": str(settings.state_dir), "HEIMDALL_CACHE_DIR": str(settings.cache_dir),
           "HEIMDALL_MODELS_URI": settings.models_uri, "HEIMDALL_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           "HEIMDALL_MODEL_NAME": settings.model_name,
           "HEIMDALL_ALLOWED_DATASET_LOCATIONS": json.dumps(settings.allowed_dataset_locations)}
    for name, value in (("MLFLOW_ARTIFACTS_URI", settings.mlflow_artifacts_uri),
                        ("CHECKPOINTS_URI", settings.checkpoints_uri)):
        if value:
            env[f"HEIMDALL_{name}"] = value
    s3 = settings.s3
    for name, value in (("ENDPOINT_URL", s3.endpoint_url), ("REGION", s3.region),
                        ("ACCESS_KEY_ID", s3.access_key_id and s3.access_key_id.get_secret_value()),
                        ("SECRET_ACCESS_KEY", s3.secret_access_key and s3.secret_access_key.get_secret_value())):
        if value:
            env[f"HEIMDALL_S3__{name}"] = value
    return env


def train_arguments(*, job_id: str, data_uri: str, config: dict, checkpoint_dir: Path, export_only: bool,
                    checkpoint: Path | None, resume: bool, idempotency_key: str) -> list[str]:
    """The job as `heimdall-training` arguments: the same for a cold child and a warm spare."""
    cmd = ["train", "--json", "--job_id", job_id, "--data_dir", data_uri, "--checkpoint_dir", str(checkpoint_dir),
           "--idempotency_key", idempotency_key, "--registration_permit"]
    for key, value in config.items():
        cmd += [f"--{key}", str(value)]
    if export_only:
        cmd += ["--export_only", "--checkpoint", str(checkpoint)]
    elif resume:
        cmd += ["--resume_training"] + (["--checkpoint", str(checkpoint)] if checkpoint else [])
    return cmd


@dataclass
class Outcome:
    returncode: int
    result: dict | None = None  # the JSON object printed on stdout
    failure: dict | None = None  # the last "failed" log line: stage, error_type, message, retryable
    mlflow_run_id: str | None = None
    stderr_tail: list[str] = field(default_factory=list)


async def stderr_line(proc: asyncio.subprocess.Process) -> str | None:
    """The child's next stderr line as text; None once it closed stderr. A line over the reader's
    limit (asyncio has dropped it from the buffer) comes back as a note saying so, never fatal."""
    try:
        raw = await proc.stderr.readline()
    except ValueError:
        return "[a log line over 1 MiB was skipped]"
    return raw.decode(errors="replace").rstrip() if raw else None


def with_line(tail: list[str], text: str) -> list[str]:
    return (tail + [text])[-STDERR_TAIL_LINES:]


async def spawn(cmd: list[str], settings: Settings) -> asyncio.subprocess.Process:
    """A child in its own process group that dies with us, with the settings as its environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    return await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, preexec_fn=_die_with_parent, limit=STDERR_LINE_LIMIT,
        env={**base, **settings_env(settings), "PYTHONUNBUFFERED": "1"})


class WarmSpare:
    """One child started ahead of its job (`python -m training.warm_spare`): it has imported torch,
    Lightning and MLflow by the time a job arrives, and runs that one job only. Every job still
    gets a fresh process of its own. The worker starts the next spare when a job has ended, not
    while it runs: on a few cores a spare's imports slow the running job down by more than they
    save the next one. A job that arrives while the spare is still importing takes it anyway: it
    is ahead of a cold start. `on_ready(True)` once the spare says its imports are done
    (SPARE_READY on stderr), `on_ready(False)` when it is taken."""

    def __init__(self, settings: Settings, *, command: list[str] | None = None, on_ready=lambda ready: None):
        self.settings, self.on_ready = settings, on_ready
        self.command = command or [sys.executable, "-m", "training.warm_spare"]
        self.proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task | None = None
        self._early_lines: list[str] = []  # what the spare wrote before its job: the job's stderr tail starts there

    async def ensure(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            self.proc, self._early_lines = await spawn(self.command, self.settings), []
            self._watch = asyncio.get_running_loop().create_task(self._until_ready(self.proc))

    async def _until_ready(self, proc: asyncio.subprocess.Process) -> None:
        while (text := await stderr_line(proc)) is not None:
            if text == SPARE_READY:
                self.on_ready(True)
                return
            self._early_lines = with_line(self._early_lines, text)

    async def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()  # a cancelled readline leaves the buffered bytes for the job's reader
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def take(self, arguments: list[str]) -> "TrainingProcess":
        await self.ensure()
        await self._stop_watching()
        proc, self.proc = self.proc, None
        self.on_ready(False)
        proc.stdin.write(json.dumps(arguments).encode() + b"\n")
        await proc.stdin.drain()
        process = TrainingProcess(proc)
        process.outcome.stderr_tail = list(self._early_lines)
        return process

    async def close(self) -> None:
        await self._stop_watching()
        self.on_ready(False)
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


class TrainingProcess:
    """One running child. `lines()` yields its parsed log lines; `wait()` gives the outcome."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.outcome = Outcome(returncode=-1)

    @classmethod
    async def start(cls, arguments: list[str], settings: Settings) -> "TrainingProcess":
        """A cold child: `python -m cli.main <arguments>`."""
        return cls(await spawn([sys.executable, "-m", "cli", *arguments], settings))

    async def lines(self):
        """Parsed JSON log lines from stderr, until the child closes it. A line over the reader's
        limit is skipped (noted in the tail), never fatal."""
        while (text := await stderr_line(self.proc)) is not None:
            self.outcome.stderr_tail = with_line(self.outcome.stderr_tail, text)
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if isinstance(line, dict):
                if line.get("event") == "failed":
                    self.outcome.failure = line
                if line.get("mlflow_run_id"):
                    self.outcome.mlflow_run_id = line["mlflow_run_id"]
                yield line

    async def wait(self) -> Outcome:
        stdout = await self.proc.stdout.read()
        self.outcome.returncode = await self.proc.wait()
        if self.outcome.returncode == EXIT_OK:
            try:
                self.outcome.result = json.loads(stdout.decode())
            except ValueError:
                self.outcome.returncode = EXIT_UNREADABLE
                self.outcome.failure = {"stage": "register", "error_type": "UnreadableResult", "retryable": True,
                                        "message": f"the job exited 0 but printed no JSON result: {stdout[:300]!r}"}
        return self.outcome

    async def answer_permit(self, granted: bool) -> None:
        try:
            self.proc.stdin.write((PERMIT_GRANTED if granted else PERMIT_DENIED).encode() + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):  # the child is gone; its exit code tells the rest
            pass

    def signal(self, signum: int) -> None:
        """SIGKILL to the whole group (DataLoader workers too); any other signal to the child alone."""
        if self.proc.returncode is None:
            try:
                if signum == signal.SIGKILL:
                    os.killpg(self.proc.pid, signum)
                else:
                    os.kill(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to the child (it checkpoints at the next batch), then SIGKILL after `grace_s`."""
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except asyncio.TimeoutError:
            self.signal(signal.SIGKILL)
            await self.proc.wait()
