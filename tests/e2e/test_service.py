"""The event-driven service, as its neighbours and ops see it: real RabbitMQ, PostgreSQL,
SeaweedFS and `mlflow server`; the service runs as `heimdall-training serve` in its own process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.support.broker import INTRUDER, INTRUDER_PASSWORD, dead_letters, publish
from tests.support.servers import free_port
from tests.support.service_stack import (dataset_ready, first_epoch_after_restart, progress_until, s3_object, settled,
                                         training_requested)


@pytest.mark.parametrize("spare", ["warm", "cold"])  # the job in a warm spare, or in a fresh child
def test_dataset_ready_yields_a_model_registered_whose_every_field_is_true(stack_factory, datasets, s3_server, spare):
    stack = stack_factory(spare)
    stack.start()
    event = dataset_ready("svc-main", 1, datasets["svc-main"] + "/")
    stack.publish(event, "dataset.ready")

    registered = stack.tap.wait_for("model.registered")[0]
    data = registered["data"]
    accepted = stack.tap.events("training.accepted", trigger_id=event["id"])
    assert len(accepted) == 1 and accepted[0]["data"]["job_id"] == data["job_id"]
    assert stack.tap.events("training.started", job_id=data["job_id"], attempt=1)
    assert stack.tap.events("training.progress", job_id=data["job_id"])
    onnx = s3_object(s3_server, data["onnx"]["uri"])
    assert hashlib.sha256(onnx).hexdigest() == data["onnx"]["sha256"] and len(onnx) == data["onnx"]["bytes"]
    card = json.loads(s3_object(s3_server, data["card_uri"]))
    assert card["model_version"] == data["model_version"] and card["onnx"]["sha256"] == data["onnx"]["sha256"]
    assert card["training"]["job_id"] == data["job_id"]
    assert data["model_name"] == stack.env["HEIMDALL_MODEL_NAME"] and data["model_version"] == 1
    assert data["model_uri"] == f"models:/{data['model_name']}/1"
    assert data["aliases"] == ["candidate", "champion"] and data["promoted"] is True
    assert data["dataset"] == {"id": "svc-main", "version": 1, "uri": datasets["svc-main"] + "/"}
    assert data["metrics"]["median_error_m"] == pytest.approx(card["metrics"]["median_error_m"])
    from mlflow import MlflowClient

    client = MlflowClient(stack.env["HEIMDALL_MLFLOW_TRACKING_URI"])
    version = client.get_model_version(data["model_name"], "1")
    assert version.run_id == data["mlflow_run_id"] and set(version.aliases) == {"candidate", "champion"}
    delivered = [d for d in stack.tap.seen if d.routing_key == "model.registered"][0]
    assert delivered.message_id == registered["id"] and delivered.type == "heimdall.model.registered.v1"


def test_replayed_and_duplicated_triggers_yield_one_job_and_one_model(stack_factory, datasets):
    stack = stack_factory()
    service = stack.start()
    event = dataset_ready("svc-dup", 1, datasets["svc-dup"])
    for _ in range(3):
        stack.publish(event, "dataset.ready")
    stack.publish(dataset_ready("svc-dup", 1, datasets["svc-dup"]), "dataset.ready")  # another id, same version

    stack.tap.wait_for("model.registered")
    settled(stack)
    assert len(stack.tap.events("training.accepted")) == 1
    assert len(stack.tap.events("training.started")) == 1
    assert len(stack.tap.events("model.registered")) == 1
    duplicates = [line for line in service.log_lines() if line.get("event") == "duplicate"]
    assert len(duplicates) == 3


def test_bad_messages_are_dead_lettered_with_a_reason_and_the_service_keeps_running(stack_factory, datasets):
    stack = stack_factory()
    service = stack.start()
    good = dataset_ready("svc-main", 1, datasets["svc-main"])
    wrong_schema = {**good, "id": str(uuid.uuid4()), "data": {**good["data"], "version": "one"}}
    unknown = {**good, "id": str(uuid.uuid4()), "type": "heimdall.dataset.ready.v2"}
    stack.publish(b"{not json", "dataset.ready", message_id="m-malformed")
    stack.publish(wrong_schema, "dataset.ready")
    stack.publish(unknown, "dataset.ready")
    stack.publish(b" " * (1024 * 1024 + 1), "dataset.ready", message_id="m-oversized")
    publish(stack.vhost.url(INTRUDER, INTRUDER_PASSWORD), training_requested("svc-main", 1), "training.requested",
            user_id=INTRUDER)
    publish(stack.vhost.url(), training_requested("svc-main", 1), "training.requested")  # no user_id at all

    reasons: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while len(reasons) < 6 and time.monotonic() < deadline:
        for queue in ("heimdall.training.datasets.dead-letter", "heimdall.training.ops.dead-letter"):
            for delivery in dead_letters(stack.vhost.url(), queue):
                reasons[delivery.message_id] = delivery.headers["x-heimdall-reason"]
        time.sleep(0.5)
    assert sorted(reasons.values()) == sorted(["malformed-json", "invalid-data", "unknown-type", "too-large",
                                               "unauthorised", "unauthorised"])
    assert reasons["m-malformed"] == "malformed-json" and reasons["m-oversized"] == "too-large"
    assert service.proc.poll() is None and service.get("/healthz").strip() == "ok"
    assert service.get("/readyz").strip() == "ready"
    assert not stack.tap.events("training.accepted")


@pytest.mark.parametrize("spare", ["warm", "cold"])  # the job in a warm spare, or in a fresh child
def test_cancel_stops_a_running_job_with_one_cancelled_event_and_no_model(stack_factory, datasets, spare):
    stack = stack_factory(spare)
    service = stack.start()
    stack.publish(training_requested("svc-cancel", 1, overrides={"epochs": 400}), "training.requested")
    with pytest.raises(AssertionError):  # "latest"/numbers resolve only for announced datasets
        stack.tap.wait_for("training.accepted", timeout_s=3)
    stack.publish(dataset_ready("svc-cancel", 1, datasets["svc-cancel"]), "dataset.ready")
    job_id = stack.tap.wait_for("training.accepted")[0]["data"]["job_id"]
    stack.tap.wait_for("model.registered", job_id=job_id)
    stack.publish(training_requested("svc-cancel", "latest", overrides={"epochs": 400, "patience": 400}),
                  "training.requested")
    long_job = stack.tap.wait_for("training.accepted", count=2)[-1]["data"]["job_id"]
    stack.tap.wait_for("training.progress", job_id=long_job)
    ops = stack.cli("ops", "cancel", long_job, "--reason", "wrong dataset")  # what ops would type
    assert ops.returncode == 0, ops.stderr

    cancelled = stack.tap.wait_for("training.cancelled", job_id=long_job, timeout_s=60)
    settled(stack)
    assert len(stack.tap.events("training.cancelled", job_id=long_job)) == 1
    assert cancelled[0]["data"]["reason"] == "wrong dataset"
    assert not stack.tap.events("model.registered", job_id=long_job)
    assert not stack.tap.events("training.failed", job_id=long_job)
    assert service.proc.poll() is None
    shown = stack.cli("jobs", "show", long_job).stdout
    assert shown.startswith(f"job {long_job}: cancelled") and "wrong dataset" in shown
    assert long_job in stack.cli("jobs", "list", "--status", "cancelled").stdout


def test_a_transient_failure_is_retried_with_backoff_then_reported_as_final(stack_factory, datasets):
    stack = stack_factory()
    stack.env["HEIMDALL_MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"  # MLflow is down
    stack.env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # the job inherits it: fail fast instead of after minutes
    stack.start()
    stack.publish(dataset_ready("svc-main", 1, datasets["svc-main"]), "dataset.ready")

    failed = stack.tap.wait_for("training.failed", count=3, timeout_s=180)
    assert [(f["data"]["attempt"], f["data"]["retryable"]) for f in failed] == [(1, True), (2, True), (3, False)]
    assert {f["data"]["stage"] for f in failed} == {"register"}  # MLflow is the registry stage's dependency
    assert all(f["data"]["error_type"] == "RegistryError" for f in failed)
    assert not stack.tap.events("model.registered")
    job = failed[0]["data"]["job_id"]
    assert stack.cli("jobs", "show", job).stdout.startswith(f"job {job}: failed")


@pytest.mark.parametrize("spare", ["warm", "cold"])  # the job in a warm spare, or in a fresh child
def test_kill_9_mid_training_then_restart_finishes_the_job_exactly_once(stack_factory, datasets, spare):
    stack = stack_factory(spare)
    first = stack.start("a")
    stack.publish(dataset_ready("svc-kill", 1, datasets["svc-kill"]), "dataset.ready")
    job_id = stack.tap.wait_for("training.accepted")[0]["data"]["job_id"]
    # the default tiny training is 3 epochs; this job needs longer to be killed in the middle
    stack.publish(training_requested("svc-kill", 1, overrides={"epochs": 60, "patience": 60}), "training.requested")
    stack.tap.wait_for("model.registered", job_id=job_id)
    long_job = stack.tap.wait_for("training.accepted", count=2)[-1]["data"]["job_id"]
    progress_until(stack.tap, long_job, 3)  # epoch 3 reported: epoch 2's checkpoint is on disk
    assert max(p["data"]["epoch"] for p in stack.tap.events("training.progress", job_id=long_job)) < 60
    first.stop(signal.SIGKILL)

    second = stack.start("a")  # same state dir: the checkpoint of the killed attempt is there
    registered = stack.tap.wait_for("model.registered", job_id=long_job, timeout_s=240)
    settled(stack)
    assert len(stack.tap.events("model.registered", job_id=long_job)) == 1 == len(registered)
    starts = stack.tap.events("training.started", job_id=long_job)
    assert [s["data"]["attempt"] for s in starts] == [1, 2]
    claims = [line for line in second.log_lines() if line.get("event") == "claimed" and line["job_id"] == long_job]
    assert len(claims) == 1
    assert (stack.tmp / "state-a" / "checkpoints" / long_job / "last.ckpt").is_file()
    assert first_epoch_after_restart(stack.tap, long_job) > 2  # went on from the checkpoint, not from epoch 0


def test_two_replicas_on_one_postgres_store_run_every_job_exactly_once(stack_factory, datasets):
    stack = stack_factory()
    replicas = [stack.start("r1"), stack.start("r2")]
    names = ["svc-r1", "svc-r2", "svc-r3"]
    for name in names:
        stack.publish(dataset_ready(name, 1, datasets[name]), "dataset.ready")
    # Delivery is at least once: both replicas' outbox relays may publish the same row. Consumers
    # de-duplicate by event id, as the contract says, and so does this check.
    def distinct_registered() -> list[dict]:
        return list({event["id"]: event for event in stack.tap.events("model.registered")}.values())

    deadline = time.monotonic() + 300
    while len(distinct_registered()) < 3 and time.monotonic() < deadline:
        assert not stack.tap.events("training.failed"), stack.tap.events("training.failed")
        time.sleep(1)
    settled(stack)
    registered = distinct_registered()
    jobs = [r["data"]["job_id"] for r in registered]
    assert len(jobs) == len(set(jobs)) == 3
    assert sorted(r["data"]["dataset"]["id"] for r in registered) == names
    claims = [line["job_id"] for r in replicas for line in r.log_lines() if line.get("event") == "claimed"]
    assert sorted(claims) == sorted(jobs)
    assert {r["data"]["model_version"] for r in registered} == {1, 2, 3}


@pytest.mark.parametrize("spare", ["warm", "cold"])  # the job in a warm spare, or in a fresh child
def test_sigterm_checkpoints_the_running_job_and_a_restart_resumes_it(stack_factory, datasets, spare):
    stack = stack_factory(spare)
    first = stack.start("a")
    stack.publish(dataset_ready("svc-kill", 1, datasets["svc-kill"]), "dataset.ready")
    stack.tap.wait_for("training.accepted")  # announced: a manual request can now name version 1
    stack.publish(training_requested("svc-kill", 1, overrides={"epochs": 60, "patience": 60}), "training.requested")
    long_job = stack.tap.wait_for("training.accepted", count=2)[-1]["data"]["job_id"]
    progress_until(stack.tap, long_job, 2)
    assert first.stop(signal.SIGTERM) == 0
    requeued = [line for line in first.log_lines() if line.get("event") == "requeued"]
    assert [line["job_id"] for line in requeued] == [long_job]
    assert (stack.tmp / "state-a" / "checkpoints" / long_job / "last.ckpt").is_file()

    stack.start("a")
    stack.tap.wait_for("model.registered", job_id=long_job, timeout_s=240)
    assert len(stack.tap.events("model.registered", job_id=long_job)) == 1
    assert not stack.tap.events("training.failed", job_id=long_job)
    assert first_epoch_after_restart(stack.tap, long_job) > 2  # the SIGTERM checkpoint was used


def test_metrics_report_jobs_by_state_and_the_service_imports_no_training_stack(stack_factory):
    stack = stack_factory()
    service = stack.start()
    metrics = service.get("/metrics")
    assert 'heimdall_training_jobs{state="queued"}' in metrics and "heimdall_training_queue_lag_seconds" in metrics
    probe = subprocess.run([sys.executable, "-m", "cli", "serve", "--check"], capture_output=True,
                           env={**os.environ, "HEIMDALL_HTTP_PORT": str(service.port)})
    assert probe.returncode == 0
    loaded = subprocess.run([sys.executable, "-c", "import sys, service.app, cli.main, service.ops_commands; "
                             "print(' '.join(sys.modules))"], capture_output=True, text=True, check=True).stdout
    heavy = {"torch", "pytorch_lightning", "lightning", "mlflow", "onnx", "onnxruntime"} & set(loaded.split())
    assert heavy == set()
