"""What the service refuses, and what it survives, as a running `serve` against the real servers.

The fast versions of the chaos report's faults (`python -m tests.chaos` runs the long ones).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
import aio_pika
import sqlalchemy as sa

from service.jobs.store import JobStore
from service.outbox import OutboxRelay
from service.metrics import ServiceMetrics
from service.topology import declare_exchange
from service.jobs.tables import OutboxMessage
from tests.support.broker import Vhost, dead_letters
from tests.support.jobs import VALID_RESULT
from tests.support.servers import PG_SOCKET_DIR, free_port
from tests.support.service_stack import (DATASETS_ROOT, MLFLOW_CREDENTIALS, ServiceProcess, dataset_ready, s3_object,
                                         training_requested, wait_until)


def reasons_of(stack, queue: str, count: int, timeout_s: float = 60) -> dict[str, str]:
    """message id -> x-heimdall-reason, once `count` dead letters are in `queue`."""
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < count and time.monotonic() < deadline:
        for delivery in dead_letters(stack.vhost.url(), queue):
            found[delivery.message_id] = delivery.headers["x-heimdall-reason"]
        time.sleep(0.3)
    return found


def assert_no_secrets(stack, s3_server, service) -> None:
    """No secret in anything the service wrote: its logs (the children's lines included), the events
    it published, its job-store rows, /metrics and the model cards: the S3 key id and secret, the
    broker's credentials, and the MLflow tracking URI's credentials."""
    secrets = [s3_server.access_key_id, s3_server.secret_access_key, stack.vhost.url().split("://")[1].split("@")[0],
               *MLFLOW_CREDENTIALS.split(":"), MLFLOW_CREDENTIALS]
    written = "".join(p.read_text(errors="replace") for p in stack.tmp.glob("serve-*.log"))
    written += "".join(d.body.decode(errors="replace") for d in stack.tap.seen)
    written += service.get("/metrics")
    written += "".join(s3_object(s3_server, d.json()["data"]["card_uri"]).decode()
                       for d in stack.tap.seen if d.routing_key == "model.registered")
    engine = sa.create_engine(stack.env["HEIMDALL_JOB_STORE_URL"])
    with engine.connect() as conn:
        written += "".join(str(row) for table in ("jobs", "outbox") for row in conn.execute(sa.text(f"SELECT * FROM {table}")))
    engine.dispose()
    assert "model.registered" in written and not [s for s in secrets if s in written]


def test_serve_starts_in_an_empty_folder_and_an_empty_store_lists_no_jobs(tmp_path):
    vhost = Vhost()
    try:
        env = {"HEIMDALL_AMQP_URL": vhost.url(), "HEIMDALL_HTTP_PORT": str(free_port())}
        service = ServiceProcess(env, tmp_path / "serve.log", cwd=tmp_path / "empty")  # waits for /readyz
        assert (tmp_path / "empty" / ".heimdall" / "jobs.db").is_file()
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
        listed = subprocess.run([sys.executable, "-m", "cli", "jobs", "list"], capture_output=True,
                                text=True, cwd=tmp_path / "empty", env=clean, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert "job id" in listed.stdout.lower() and len(listed.stdout.strip().splitlines()) == 1
        fresh = subprocess.run([sys.executable, "-m", "cli", "jobs", "list"], capture_output=True,
                               text=True, cwd=tmp_path, env={**clean, "HEIMDALL_STATE_DIR": str(tmp_path / "new")},
                               timeout=60)
        # a state dir that was never served (or a mistyped one) holds no store: a clear error, nothing created
        assert fresh.returncode == 1 and "no job store at" in fresh.stderr, fresh.stderr
        assert not (tmp_path / "new").exists()
        assert service.stop() == 0
    finally:
        vhost.close()


def test_refused_locations_and_names_are_dead_lettered_with_their_reason(stack_factory, datasets, s3_server):
    stack = stack_factory()
    service = stack.start()
    outside = dataset_ready("svc-main", 1, "s3://heimdall-datasets/elsewhere/svc-main/v1")
    mismatch = dataset_ready("svc-dup", 1, datasets["svc-main"])  # the URI holds svc-main's manifest
    stack.publish(outside, "dataset.ready")
    stack.publish(mismatch, "dataset.ready")
    stack.publish(dataset_ready("svc-main", 1, datasets["svc-main"]), "dataset.ready")
    stack.tap.wait_for("training.accepted")
    requests = {
        "checkpoint-not-allowed": training_requested("svc-main", 1, export_only=True,
                                                     checkpoint_uri="file:///etc/passwd"),
        "unknown-job": training_requested("svc-main", 1, resume_job_id="../../../../tmp/x"),
        "unknown-dataset": training_requested("never-announced", "latest"),
    }
    for event in requests.values():
        stack.publish(event, "training.requested")
    cancel = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "heimdall/ops",
              "type": "heimdall.training.cancel.v1", "time": outside["time"],
              "data": {"job_id": str(uuid.uuid4()), "reason": "test"}}
    stack.publish(cancel, "training.cancel")

    datasets_dlq = reasons_of(stack, "heimdall.training.datasets.dead-letter", 2)
    assert datasets_dlq == {outside["id"]: "dataset-not-allowed", mismatch["id"]: "dataset-mismatch"}
    ops_dlq = reasons_of(stack, "heimdall.training.ops.dead-letter", 4)
    assert ops_dlq == {**{e["id"]: reason for reason, e in requests.items()}, cancel["id"]: "unknown-job"}
    assert len(stack.tap.events("training.accepted")) == 1
    assert service.get("/readyz").strip() == "ready"
    stack.tap.wait_for("model.registered")
    delivered = [d for d in stack.tap.seen if d.routing_key == "model.registered"][0]
    assert (delivered.delivery_mode, delivered.content_type) == (2, "application/json")  # events.md
    assert delivered.timestamp is not None and delivered.app_id == "heimdall-training"
    assert_no_secrets(stack, s3_server, service)

    # An operator re-drives a dead letter whose cause is not fixed: consumed once more, refused
    # again, and counted as a re-drive in serve's /metrics.
    again = dataset_ready("svc-dup", 1, datasets["svc-main"])
    stack.publish(again, "dataset.ready")
    assert wait_until(lambda: again["id"] in stack.cli("dead-letters", "list").stdout, 60)
    assert stack.cli("dead-letters", "redrive", "--id", again["id"]).returncode == 0
    counted = 'heimdall_training_redriven_messages_total{action="dead-letter",routing_key="dataset.ready"} 1.0'
    assert wait_until(lambda: counted in service.get("/metrics"), 60)
    assert reasons_of(stack, "heimdall.training.datasets.dead-letter", 1) == {again["id"]: "dataset-mismatch"}


def psql(sql: str) -> None:
    subprocess.run(["psql", "-h", PG_SOCKET_DIR, "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                    "-c", sql], check=True, capture_output=True, timeout=30)


def test_a_short_postgres_outage_loses_no_trigger_to_the_dead_letter_queue(stack_factory, datasets):
    stack = stack_factory()
    service = stack.start()
    database = sa.make_url(stack.env["HEIMDALL_JOB_STORE_URL"]).database
    try:
        psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        event = dataset_ready("svc-main", 1, datasets["svc-main"])
        stack.publish(event, "dataset.ready")
        deadline = time.monotonic() + 60
        while not [line for line in service.log_lines() if line.get("event") == "retrying"
                   and line.get("event_id") == event["id"]]:
            assert time.monotonic() < deadline, "the trigger was never retried while the store was away"
            time.sleep(0.3)
    finally:
        psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    accepted = stack.tap.wait_for("training.accepted", timeout_s=90)
    assert accepted[0]["data"]["trigger_id"] == event["id"]
    assert dead_letters(stack.vhost.url(), "heimdall.training.datasets.dead-letter") == []
    stack.tap.wait_for("model.registered", timeout_s=180)
    assert service.proc.poll() is None and service.get("/readyz").strip() == "ready"


def test_an_unroutable_event_stays_in_the_outbox_until_a_queue_is_bound(tmp_path):
    """`model.registered` before the inference service declared its queue: kept, retried, counted,
    and the events behind it still go out."""
    vhost = Vhost()
    store = JobStore(f"sqlite:///{tmp_path}/jobs.db")
    store.migrate()
    metrics = ServiceMetrics()
    store.add_messages([outbox_row("model.registered", VALID_RESULT), outbox_row("training.started", {})])

    async def main():
        connection = await aio_pika.connect(vhost.url())
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await declare_exchange(channel)
            started = await channel.declare_queue("inference-started", exclusive=True)
            await started.bind(exchange, "training.started")
            relay = OutboxRelay(store, exchange, metrics)
            assert await relay.relay_once() == 1  # training.started went; model.registered came back
            assert [m.routing_key for m in store.read.pending_messages()] == ["model.registered"]
            assert await started.get(timeout=5, fail=False) is not None
            registered = await channel.declare_queue("inference-registered", exclusive=True)
            await registered.bind(exchange, "model.registered")
            relay.returned.clear()  # the backoff has passed
            assert await relay.relay_once() == 1
            assert store.read.pending_messages() == []
            return await registered.get(timeout=5, fail=False)

    try:
        delivered = asyncio.run(main())
    finally:
        store.close()
        vhost.close()
    assert delivered is not None and json.loads(delivered.body)["type"] == "heimdall.model.registered.v1"
    assert 'heimdall_training_outbox_unroutable_total{routing_key="model.registered"} 1.0' in \
        metrics.render().decode()


def outbox_row(routing_key: str, data: dict) -> OutboxMessage:
    event = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "heimdall/training",
             "type": f"heimdall.{routing_key}.v1", "time": "2026-12-01T00:00:00Z", "data": data}
    return OutboxMessage(id=event["id"], routing_key=routing_key, body=json.dumps(event))


def test_ops_export_and_resume_of_an_earlier_job_register_under_the_job_store_key(stack_factory, datasets):
    stack = stack_factory()
    stack.start()
    stack.publish(dataset_ready("svc-main", 1, datasets["svc-main"]), "dataset.ready")
    first = stack.tap.wait_for("model.registered")[0]["data"]
    checkpoint = f"file://{stack.tmp / 'state-a' / 'checkpoints' / first['job_id'] / 'last.ckpt'}"
    stack.publish(training_requested("svc-main", 1, export_only=True, checkpoint_uri=checkpoint),
                  "training.requested")
    stack.publish(training_requested("svc-main", "latest", resume_job_id=first["job_id"],
                                     overrides={"epochs": 4}), "training.requested")
    registered = stack.tap.wait_for("model.registered", count=3, timeout_s=300)
    from mlflow import MlflowClient

    client = MlflowClient(stack.env["HEIMDALL_MLFLOW_TRACKING_URI"])
    store = JobStore(stack.env["HEIMDALL_JOB_STORE_URL"])
    try:
        for event in registered:
            job = store.read.get(event["data"]["job_id"])
            version = client.get_model_version(event["data"]["model_name"], str(event["data"]["model_version"]))
            assert version.tags["idempotency_key"] == job.idempotency_key  # one key, from store to registry
        modes = sorted((store.read.get(e["data"]["job_id"]).export_only, e["data"]["model_version"])
                       for e in registered)
    finally:
        store.close()
    assert [mode for mode, _ in modes] == [False, False, True] and len({v for _, v in modes}) == 3


def test_latest_is_resolved_through_the_dataset_root(stack_factory, datasets):
    stack = stack_factory()
    stack.env["HEIMDALL_DATASET_ROOT_URI"] = DATASETS_ROOT
    stack.start()
    stack.publish(training_requested("svc-dup", "latest", overrides={"epochs": 1}), "training.requested")
    accepted = stack.tap.wait_for("training.accepted")[0]["data"]
    assert (accepted["dataset_id"], accepted["version"]) == ("svc-dup", 1)  # never announced: found in the root


def test_a_background_task_that_dies_makes_the_service_unready_and_exit_non_zero(tmp_path):
    """A bug that escapes a background task (simulated by one more task that raises)."""
    from service.app import Service
    from foundation.settings import Settings

    vhost = Vhost()
    settings = Settings(state_dir=tmp_path / "state", amqp_url=vhost.url(), http_port=0)

    async def main():
        service = Service(settings)
        await service.start()

        async def buggy():
            raise RuntimeError("a bug")

        service.tasks.append(asyncio.create_task(buggy(), name="buggy"))
        await asyncio.sleep(0.2)
        ready = await service.readyz()
        return ready, await service.run_until(asyncio.Event())

    try:
        (status, body, _), code = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        vhost.close()
    assert status == 503 and b"buggy-died" in body
    assert code == 1


def test_a_dead_letter_copy_that_cannot_be_published_sends_the_message_back_not_into_limbo(tmp_path):
    """The dead-letter exchange is missing (a broker half set up): the refused message must be
    requeued at once, not left unacknowledged until consumer_timeout."""
    from service.consumer import Action, Consumer
    from foundation.settings import Settings
    from service.topology import DATASET_EVENTS

    vhost = Vhost()
    store = JobStore(f"sqlite:///{tmp_path}/jobs.db")

    async def main():
        connection = await aio_pika.connect(vhost.url())
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("work", exclusive=True)
            await channel.default_exchange.publish(aio_pika.Message(b"{not json", message_id="m1"), "work")
            message = await queue.get(timeout=5)
            publishing = await connection.channel(publisher_confirms=True, on_return_raises=True)
            consumer = Consumer(Settings(state_dir=tmp_path), store, publishing, lambda: None, lambda job_id: None)
            action = await consumer.handle(message, DATASET_EVENTS)
            again = await queue.get(timeout=5, fail=False)
            return action, again

    try:
        action, again = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        store.close()
        vhost.close()
    assert action is Action.REQUEUE
    assert again is not None and again.message_id == "m1" and again.redelivered
