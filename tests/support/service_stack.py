"""`heimdall-training serve` as its own process against the real servers, and the events that
drive it: what the end-to-end tests, the chaos report and the latency benchmark share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

from tests.support.broker import Tap, Vhost, publish
from tests.support.cli import run_cli
from tests.support.servers import free_port

DATASETS_ROOT = "s3://heimdall-datasets/service-tests"
TINY_TRAINING = {"preset": "tiny", "epochs": 3, "batch_size": 32, "min_labelled_sessions": 20, "patience": 3}


def dataset_ready(dataset_id: str, version: int, uri: str, event_id: str | None = None) -> dict:
    return {"specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": "heimdall/acquisition",
            "type": "heimdall.dataset.ready.v1", "time": datetime.now(timezone.utc).isoformat(),
            "subject": f"{dataset_id}/v{version}", "datacontenttype": "application/json",
            "data": {"dataset_id": dataset_id, "version": version, "uri": uri, "sessions": 240,
                     "labelled_sessions": 240}}


def training_requested(dataset_id: str, version, **data) -> dict:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "heimdall/ops",
            "type": "heimdall.training.requested.v1", "time": datetime.now(timezone.utc).isoformat(),
            "data": {"dataset_id": dataset_id, "version": version, "reason": "test", **data}}


class ServiceProcess:
    def __init__(self, env: dict, log: Path, cwd: Path | None = None):
        self.env, self.log, self.port = env, log, int(env["HEIMDALL_HTTP_PORT"])
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
        if cwd is not None:  # a folder of its own (created here, empty): relative defaults land in it
            cwd.mkdir(parents=True, exist_ok=True)
            clean["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env={**clean, **env}, cwd=cwd,
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.get("/readyz").startswith("ready"):
            assert self.proc.poll() is None, f"serve exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"serve not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)

    def get(self, path: str) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.read().decode()
        except OSError as exc:
            return f"error {exc}"

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


def wait_until(check, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Whether `check()` became true within `timeout_s` (polled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(poll_s)
    return False


MLFLOW_CREDENTIALS = "heimdall-ops:mlflow-pw-51b3e0"  # the test server checks none; the client sends them


class Stack:
    """One vhost and one job store database: the services started here share them."""

    def __init__(self, tmp: Path, s3, mlflow_url: str, postgres):
        self.tmp, self.vhost = tmp, Vhost()
        self.env = {
            "HEIMDALL_AMQP_URL": self.vhost.url(), "HEIMDALL_JOB_STORE_URL": postgres.create_database(),
            "HEIMDALL_MODELS_URI": f"s3://heimdall-models/svc-{uuid.uuid4().hex[:6]}",
            # with credentials, as a tracking server behind auth is given them: they must never show
            "HEIMDALL_MLFLOW_TRACKING_URI": mlflow_url.replace("://", f"://{MLFLOW_CREDENTIALS}@", 1),
            "HEIMDALL_MODEL_NAME": f"svc-{uuid.uuid4().hex[:6]}",
            "HEIMDALL_S3__ENDPOINT_URL": s3.endpoint_url, "HEIMDALL_S3__ACCESS_KEY_ID": s3.access_key_id,
            "HEIMDALL_S3__SECRET_ACCESS_KEY": s3.secret_access_key,
            "HEIMDALL_DEFAULT_TRAINING": json.dumps(TINY_TRAINING), "HEIMDALL_OPS_ALLOWED_USERS": '["guest"]',
            "HEIMDALL_LEASE_S": "3", "HEIMDALL_PROGRESS_INTERVAL_S": "0.5", "HEIMDALL_RETRY_BACKOFF_S": "1",
            "HEIMDALL_SHUTDOWN_GRACE_S": "30",
            "HEIMDALL_ALLOWED_DATASET_LOCATIONS": json.dumps([DATASETS_ROOT])}
        self.services: list[ServiceProcess] = []
        self.tap = None

    def start(self, name: str = "a") -> ServiceProcess:
        state = self.tmp / f"state-{name}"  # one state dir per replica: replicas share no disk
        env = {**self.env, "HEIMDALL_STATE_DIR": str(state), "HEIMDALL_HTTP_PORT": str(free_port())}
        service = ServiceProcess(env, self.tmp / f"serve-{name}-{len(self.services)}.log")
        self.services.append(service)
        if self.tap is None:
            self.tap = Tap(self.vhost.url())
        return service

    def publish(self, event: dict, routing_key: str, **properties) -> None:
        """As guest, who is on the ops allow-list (the user_id an ops tool sets)."""
        publish(self.vhost.url(), event, routing_key, **{"user_id": "guest", **properties})

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`heimdall-training ARGS` as an operator beside these replicas: the same broker, store and servers."""
        return run_cli(list(args), self.tmp / "cli-state", **self.env)

    def close(self) -> None:
        for service in self.services:
            service.stop(signal.SIGKILL)
        self.vhost.close()


def progress_until(tap: Tap, job_id: str, epoch: int) -> None:
    """Wait until the job has reported `epoch` epochs done (so a checkpoint of epoch >= 1 exists)."""
    deadline = time.monotonic() + 180
    while not [p for p in tap.events("training.progress", job_id=job_id) if p["data"]["epoch"] >= epoch]:
        assert time.monotonic() < deadline, f"job {job_id} never reached epoch {epoch}"
        time.sleep(0.3)


def first_epoch_after_restart(tap: Tap, job_id: str) -> int:
    """The first epoch the job reported after its second training.started: > 1 means it resumed."""
    starts = 0
    for delivery in tap.seen:
        body = delivery.json()
        if body.get("data", {}).get("job_id") != job_id:
            continue
        starts += delivery.routing_key == "training.started"
        if starts >= 2 and delivery.routing_key == "training.progress":
            return body["data"]["epoch"]
    raise AssertionError(f"no progress of {job_id} after its restart")


def settled(stack: Stack, timeout_s: float = 60) -> None:
    """Wait until no job is queued or running and every decided event has been published: past this
    point nothing more can arrive, so a count of events proves a negative without sleeping."""
    from service.jobs.store import JobStore

    store = JobStore(stack.env["HEIMDALL_JOB_STORE_URL"])
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            counts = store.read.counts_by_status()
            if counts["queued"] == counts["running"] == 0 and store.read.pending_count() == 0:
                return
            assert time.monotonic() < deadline, f"not settled: {counts}, {store.read.pending_count()} unpublished"
            time.sleep(0.3)
    finally:
        store.close()


def s3_object(s3_server, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
