"""What a job's child is told to do (its `JobSpec`), and the checkpoints it needs, brought to this replica first.

A job that another replica started resumes from what that one uploaded (`HEIMDALL_CHECKPOINTS_URI`);
an export or resume job names its checkpoint, downloaded here once when it lives in S3.
"""

from __future__ import annotations

import logging
from pathlib import Path

from foundation.checkpoint_store import job_store, pull
from foundation.errors import ConfigError
from service.jobs.store import Job
from foundation.logs import log_event
from foundation.object_store import open_store
from foundation.settings import Settings
from foundation.child_protocol import JobSpec

log = logging.getLogger(__name__)


def job_spec(settings: Settings, job: Job) -> JobSpec:
    """What the job's child is told to do; first brings here the checkpoints it resumes from."""
    checkpoint_dir = settings.job_checkpoint_dir(job.id)
    if settings.checkpoints_uri and not (checkpoint_dir / "last.ckpt").is_file() and not job.export_only:
        # claimed after another replica ran it: resume from what that one uploaded
        pulled = pull(job_store(settings.checkpoints_uri, job.id, settings.s3.credentials()), checkpoint_dir)
        if pulled:
            log_event(log, "checkpoints pulled", job_id=job.id, files=pulled)
    checkpoint = local_checkpoint(settings, job)
    resume = checkpoint is not None and not job.export_only
    if (checkpoint_dir / "last.ckpt").is_file() and not job.export_only:
        checkpoint, resume = checkpoint_dir / "last.ckpt", True  # this job's own progress comes first
    return JobSpec(job_id=job.id, data_uri=job.dataset_uri, config=job.config, checkpoint_dir=checkpoint_dir,
                   export_only=job.export_only, checkpoint=checkpoint, resume_training=resume,
                   idempotency_key=job.idempotency_key, registration_permit=True)


def local_checkpoint(settings: Settings, job: Job) -> Path | None:
    """The job's checkpoint_uri as a local file (downloaded once when it lives in S3)."""
    uri = job.checkpoint_uri
    if uri is None:
        return None
    if not uri.startswith("s3://"):
        return Path(uri.removeprefix("file://"))
    local = settings.job_checkpoint_dir(job.id) / "given.ckpt"
    if not local.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        root, _, key = uri.rpartition("/")
        try:
            open_store(root, settings.s3.credentials()).download(key, local)
        except FileNotFoundError as exc:
            raise ConfigError(f"checkpoint_uri {uri}: no such object", stage="data") from exc
    return local
