"""Logs: JSON lines for machines, short stage lines and a progress bar for people.

`configure_logging(job_id)` installs one handler on the root logger, so third-party lines
(Lightning, MLflow) come out in the same shape: JSON lines with the job id on every line,
what the service reads from its child. `human=True` is for a person at a terminal: one
line per stage of the job, a progress bar, warnings, and nothing of third-party chatter.
Fields are passed as `extra={"fields": {...}}` or through `log_event`. Secrets never reach
a log: settings hold them as SecretStr.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_job_id: str | None = None

# Known noise, each silenced by its exact message and nothing broader.
NOISY_WARNINGS = (
    # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; nothing of ours to change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # A resumed job, or a bench re-run, writes into its own checkpoint folder on purpose.
    r"Checkpoint directory .* exists and is not empty",
)
NOISY_LOG_LINES = {
    # The ONNX exporter registers torchvision's operators when it can; we do not use them.
    "torch.onnx._internal.exporter._registration": r"torchvision is not installed\. Skipping torchvision::\w+$",
}
OUR_LOGGERS = ("cli.", "service.", "training.", "foundation.")  # our own modules' loggers
QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "matplotlib", "PIL", "onnx_ir",
                 "onnxscript", "torch.onnx")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "job_id": _job_id,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str))


class _DropMessage(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def configure_logging(job_id: str | None, level: int = logging.INFO, stream=None, *, human: bool = False) -> None:
    global _job_id
    _job_id = job_id
    stream = stream or sys.stderr
    if human:
        handler: logging.Handler = HumanHandler(stream)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, pattern in NOISY_LOG_LINES.items():
        logging.getLogger(name).addFilter(_DropMessage(pattern))
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow installs a handler of its own on import unless told not to; its lines then reach ours.
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"


def log_event(logger: logging.Logger, event: str, **fields) -> None:
    """One lifecycle line: `event` is the message, `fields` its structured data."""
    logger.info(event, extra={"fields": {"event": event, **fields}})


def counted(items: Iterable[T], *, total: int, unit: str, logger: logging.Logger) -> Iterator[T]:
    """Yield `items`, logging a `progress` event (done, total, unit) every 2 % of `total` and at the end."""
    every, done = max(total // 50, 1), 0
    for done, item in enumerate(items, 1):
        yield item
        if done % every == 0 and done < total:
            log_event(logger, "progress", done=done, total=total, unit=unit)
    log_event(logger, "progress", done=done, total=total, unit=unit)


# --- for people --------------------------------------------------------------------------


_secrets: list[str] = []
REDACTED = "***"
MIN_SECRET_CHARS = 6


def register_secrets(values) -> None:
    """Secret strings (passwords, keys, credentials in URLs) that no log line, event or stored
    failure may carry: `redact` replaces them. The settings register theirs when loaded. Values
    under MIN_SECRET_CHARS are not: they would match ordinary words (a development `guest`)."""
    _secrets[:] = sorted({v for v in [*_secrets, *values] if v and len(v) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return text


def public_uri(uri: str) -> str:
    """`uri` without the credentials in its user-info part (`https://user:pw@host` -> `https://host`)."""
    scheme, sep, rest = uri.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}{sep}{authority.rpartition('@')[2]}{slash}{path}" if sep else uri


def printable(text: str) -> str:
    """`text` safe for a terminal and for one log line: control characters (newlines, escapes) shown
    as escapes, never acted on. For what a dataset or a message author wrote."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def format_km(metres: float) -> str:
    return f"{metres / 1000:.2f} km"


def format_clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def stage_line(event: str | None, f: dict) -> str | None:
    """The readable line for one lifecycle event of ours; None for events a person need not see."""
    match event:
        case "dataset verified":
            s = f["sessions"]
            return f"verifying dataset   ok: {s['train']} train, {s['val']} val, {s['test']} test sessions"
        case "already registered":
            return f"registering         already registered as version {f['model_version']}: nothing trained"
        case "started":
            return f"training            MLflow run {f['mlflow_run_id']}"
        case "fitted":
            return (f"training            done: {f['epochs_run']} epochs in {format_clock(f['fit_s'])}, "
                    f"best epoch {f['best_epoch']}")
        case "evaluated":
            return f"evaluating          median error {format_km(f['metrics']['median_error_m'])} on the test split"
        case "exported":
            return (f"exporting           model.onnx, {f['onnx_bytes'] / 1e6:.1f} MB; ONNX Runtime matches "
                    f"PyTorch to {f['parity']['position_m']:.2g} m")
        case "registered":
            return (f"registering         version {f['model_version']} ({', '.join(f['aliases'])}), "
                    f"{format_clock(f['elapsed_s'])} in all")
        case "checkpointed":
            return f"interrupted         checkpoint saved at epoch {f['epoch']}: resume with --resume_training"
        case "bench scenario":
            return f"bench scenario      {f['scenario']}: " + ", ".join(f"{v} {k}" for k, v in f["sessions"].items())
    return None


def progress_text(f: dict, width: int) -> str:
    """`epoch 12/40 [#####-----] val error 1.23 km  ETA 1:05`, or `sessions 1500/3000 [#####-----]`."""
    if "epoch" in f:
        label, done, total = "epoch", f["epoch"], f["max_epochs"]
        error = f.get("metrics", {}).get("val_median_error_m")
        tail = (f"  val error {format_km(error)}" if error is not None else "") + f"  ETA {format_clock(f['eta_s'])}"
    else:
        label, done, total, tail = f["unit"], f["done"], f["total"], ""
    head = f"  {label} {done}/{total} "
    cells = max(width - len(head) - len(tail) - 2, 10)
    filled = int(cells * done / max(total, 1))
    return f"{head}[{'#' * filled}{'-' * (cells - filled)}]{tail}"


class HumanHandler(logging.Handler):
    """Stage lines, one progress bar redrawn in place (on a TTY), warnings and errors."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream
        self.tty = stream.isatty()
        self._bar_open = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = getattr(record, "fields", {})
            if fields.get("event") == "progress":
                self._bar(progress_text(fields, min(shutil.get_terminal_size().columns, 100)))
                return
            text = self.text(record, fields)
            if text is not None:
                self._line(text)
        except Exception:
            self.handleError(record)

    @staticmethod
    def text(record: logging.LogRecord, fields: dict) -> str | None:
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {record.getMessage().strip()}"
            return text + ("\n" + logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        if fields.get("event") == "failed":
            return None  # the CLI prints the failure itself, once
        line = stage_line(fields.get("event"), fields)
        if line is not None:
            return line
        # Our own plain lines (say, where a dataset was written); third-party chatter stays out.
        return record.getMessage() if record.name.startswith(OUR_LOGGERS) and not fields else None

    def _bar(self, text: str) -> None:
        text = redact(text)
        self.stream.write(("\r\x1b[K" + text) if self.tty else text + "\n")
        self._bar_open = self.tty
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(("\n" if self._bar_open else "") + redact(text) + "\n")
        self._bar_open = False
        self.stream.flush()
