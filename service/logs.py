"""Structured JSON logs: one object per line, the job id on every line.

`configure_logging(job_id)` installs the formatter on the root logger, so third-party lines
(Lightning, MLflow) come out in the same shape. Fields are passed as `extra={"fields": {...}}`
or through `log_event`. Secrets never reach a log: settings hold them as SecretStr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_job_id: str | None = None


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
        return json.dumps(line, default=str)


def configure_logging(job_id: str | None, level: int = logging.INFO, stream=None) -> None:
    global _job_id
    _job_id = job_id
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "matplotlib", "PIL", "onnx_ir",
                  "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow installs a handler of its own on import unless told not to; its lines then reach ours.
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"


def log_event(logger: logging.Logger, event: str, **fields) -> None:
    """One lifecycle line: `event` is the message, `fields` its structured data."""
    logger.info(event, extra={"fields": {"event": event, **fields}})
