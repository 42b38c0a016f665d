"""Any replica resumes any job: checkpoints in object storage (the real S3 server), replicas that
share no disk, one PostgreSQL job store."""

from __future__ import annotations

import signal
import time
import uuid

from tests.support.service_stack import (dataset_ready, first_epoch_after_restart, progress_until, settled,
                                         training_requested)


def uploaded(s3_server, prefix: str) -> list[str]:
    bucket, _, key = prefix.removeprefix("s3://").partition("/")
    listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=key + "/")
    return [item["Key"] for item in listing.get("Contents", [])]


def test_a_job_killed_on_one_replica_resumes_on_another_from_the_uploaded_epoch(stack_factory, datasets, s3_server):
    stack = stack_factory()
    checkpoints = f"s3://heimdall-models/checkpoints-{uuid.uuid4().hex[:8]}"
    stack.env["HEIMDALL_CHECKPOINTS_URI"] = checkpoints
    first = stack.start("r1")
    stack.publish(dataset_ready("svc-kill", 1, datasets["svc-kill"]), "dataset.ready")
    stack.tap.wait_for("model.registered")  # announced, and the tiny default job is done
    stack.publish(training_requested("svc-kill", 1, overrides={"epochs": 20, "patience": 20}), "training.requested")
    long_job = stack.tap.wait_for("training.accepted", count=2)[-1]["data"]["job_id"]
    progress_until(stack.tap, long_job, 3)
    deadline = time.monotonic() + 60
    while not any(key.endswith(f"{long_job}/last.ckpt") for key in uploaded(s3_server, checkpoints)):
        assert time.monotonic() < deadline, "no checkpoint was uploaded"
        time.sleep(0.3)
    first.stop(signal.SIGKILL)

    second = stack.start("r2")  # another state dir: nothing of r1's disk is here
    registered = stack.tap.wait_for("model.registered", job_id=long_job, timeout_s=300)
    settled(stack)
    assert len({e["id"] for e in stack.tap.events("model.registered", job_id=long_job)}) == 1 == len(registered)
    resumed_from = first_epoch_after_restart(stack.tap, long_job)
    assert resumed_from > 2, f"resumed at epoch {resumed_from}: from scratch, not from the uploaded checkpoint"
    pulled = [line for line in second.log_lines() if line.get("event") == "checkpoints pulled"]
    assert pulled and pulled[0]["job_id"] == long_job and "last.ckpt" in pulled[0]["files"]

    # resume_job_id of a job that ran on the replica that is gone
    stack.publish(training_requested("svc-kill", 1, resume_job_id=long_job, overrides={"epochs": 21, "patience": 21}),
                  "training.requested")
    resumed_job = stack.tap.wait_for("training.accepted", count=3)[-1]["data"]["job_id"]
    stack.tap.wait_for("model.registered", job_id=resumed_job, timeout_s=300)
    assert [e["data"]["epoch"] for e in stack.tap.events("training.progress", job_id=resumed_job)][0] > 3
    print(f"resumed on r2 at epoch {resumed_from}")

