"""The one protocol between the async service and its training child, both ends of it.

    service (service/runner/)                         child (`python -m training`)
      JobSpec  ── a file (`--spec`) or one JSON line on stdin (a warm spare) ──▶
               ◀── ChildMessage, one JSON line each, on a pipe of its own (`--protocol-fd N`)
      PermitAnswer ── one JSON line on stdin, for the PermitRequest with that id ──▶

The child's stdout and stderr are log text and nothing more: whatever a log line contains (a
dataset's file name with newlines and JSON in it, say), it can never be read as a message. Only
this module writes protocol messages (`ChildChannel`), and tests/test_layout.py holds every other
module to that. A line on the protocol pipe that is not a valid message is a protocol error,
never guessed at.

The settings travel as the serialised settings model in one environment variable
(`foundation.settings.SETTINGS_ENV`), secrets included, so the child builds exactly the service's
object; DDP ranks inherit it.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import uuid
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from foundation.errors import HeimdallError
from foundation.logs import redact
from foundation.train_config import TrainConfig

STAGES = ("data", "train", "export", "register")  # the contract's stages; any other is reported as train
MAX_MESSAGE_BYTES = 1 << 20


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobSpec(Frozen):
    """One training job, whole: what the child is told to do."""

    job_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    data_uri: str  # the dataset version: folder, file:// or s3://.../<id>/v<k>/
    config: TrainConfig = TrainConfig()
    checkpoint_dir: Path | None = None  # default: <state_dir>/checkpoints/<job_id>
    experiment_name: str = "heimdall-localization"
    run_name_prefix: str = "train"
    export_only: bool = False  # skip training; export `checkpoint`
    checkpoint: Path | None = None  # a Lightning checkpoint to export or resume from
    resume_training: bool = False  # from `checkpoint`, else <checkpoint_dir>/last.ckpt
    idempotency_key: str | None = None  # the service's key for the job; else derived from data and config
    registration_permit: bool = False  # ask the service (PermitRequest) before creating a model version


def write_spec(spec: JobSpec, path: Path) -> Path:
    """The spec as a file (`--spec`), written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_text(spec.model_dump_json())
    partial.replace(path)
    return path


class Failure(Frozen):
    """Why a job (or one attempt of it) failed: what `training.failed` and the job store carry."""

    stage: Literal["data", "train", "export", "register"] = "train"
    error_type: str
    message: str
    retryable: bool

    @field_validator("message")
    @classmethod
    def _no_secrets(cls, message: str) -> str:  # an error's text may quote a URL with its credentials
        return redact(message)

    @classmethod
    def of(cls, exc: BaseException, *, prefix: str = "") -> "Failure":
        """A failure from an exception: a HeimdallError says its stage and retryable; any other is a bug."""
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # the state or cache disk is full:
            return cls(stage="data", error_type="StorageFull", retryable=True,  # a storage problem, for a retry
                       message=prefix + f"no space left on the device: {exc}")
        stage = getattr(exc, "stage", "train")
        return cls(stage=stage if stage in STAGES else "train", error_type=type(exc).__name__,
                   message=prefix + (exc.message if isinstance(exc, HeimdallError) else str(exc)),
                   retryable=getattr(exc, "retryable", False))


class StopReason(str, Enum):
    """Why the service stopped a running child."""

    CANCEL = "cancel"  # a training.cancel for the job
    SHUTDOWN = "shutdown"  # the service is stopping: the job goes back to the queue
    TIMEOUT = "timeout"  # the job's time limit passed
    LOST_CLAIM = "lost-claim"  # the lease lapsed: another replica may own the job now
    SILENT = "silent"  # the child sent nothing for longer than the silence limit


class SpareReady(Frozen):
    kind: Literal["spare-ready"] = "spare-ready"  # a warm spare finished its imports


class Started(Frozen):
    kind: Literal["started"] = "started"
    mlflow_run_id: str | None = None


class Progress(Frozen):
    kind: Literal["progress"] = "progress"
    epoch: int
    max_epochs: int
    eta_s: float | None = None
    metrics: dict[str, float | None] = {}


class Heartbeat(Frozen):
    kind: Literal["heartbeat"] = "heartbeat"  # alive between progress reports (a long fit, export, upload)


class PermitRequest(Frozen):
    kind: Literal["permit-request"] = "permit-request"
    request_id: str


class Failed(Frozen):
    kind: Literal["failed"] = "failed"
    failure: Failure


class Result(Frozen):
    kind: Literal["result"] = "result"
    result: dict  # the job's summary: what `model.registered` is built from


ChildMessage = Annotated[Union[SpareReady, Started, Progress, Heartbeat, PermitRequest, Failed, Result],
                         Field(discriminator="kind")]
CHILD_MESSAGE = TypeAdapter(ChildMessage)


class PermitAnswer(Frozen):
    request_id: str
    granted: bool


class ProtocolError(ValueError):
    """A line on the protocol pipe that is not a child message."""


def parse_child_message(line: bytes | str) -> ChildMessage:
    try:
        return CHILD_MESSAGE.validate_json(line)
    except ValidationError as exc:
        raise ProtocolError(f"not a child message: {exc.errors(include_url=False)[:1]}") from None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode() + b"\n"


class ChildChannel:
    """The child's end: messages out on the protocol pipe, permit answers in on stdin.

    With no pipe (a person running `heimdall-training train`, or a DDP rank the launcher started)
    `send` does nothing and a permit is not asked for: there is no service to ask."""

    def __init__(self, fd: int | None, answers=None):
        self._out = os.fdopen(fd, "wb", buffering=0) if fd is not None else None
        self._answers = answers if answers is not None else sys.stdin
        self._writing = threading.Lock()  # the heartbeat thread sends too: one message at a time

    @property
    def connected(self) -> bool:
        return self._out is not None

    def send(self, message: BaseModel) -> None:
        if self._out is not None:
            with self._writing:
                self._out.write(encode(message))

    def ask_permit(self) -> bool:
        """Ask the service whether this job may register now; an answer to an older request is skipped.
        With no service to ask, the answer is no: a spec that wants a permit is the service's job.
        Must run in the main thread (it sets the SIGTERM disposition)."""
        if self._out is None:
            return False
        # From the request on, a SIGTERM (a cancel, the time limit, a shutdown) no longer ends the
        # process: the service answers "no" once it is stopping the job, and after a "yes" the
        # registration runs to its Result, so that window leaves a whole model or none.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        request = PermitRequest(request_id=str(uuid.uuid4()))
        self.send(request)
        while line := self._answers.readline():
            try:
                answer = PermitAnswer.model_validate_json(line)
            except ValidationError:
                continue
            if answer.request_id == request.request_id:
                return answer.granted
        return False  # stdin closed: the service is gone


_channel = ChildChannel(None)


def open_channel(fd: int | None) -> ChildChannel:
    """The process's channel to the service (once, at the child's start); `channel()` returns it."""
    global _channel
    _channel = ChildChannel(fd)
    return _channel


def channel() -> ChildChannel:
    return _channel
