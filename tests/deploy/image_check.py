"""The built image, run as its neighbours and Docker see it (deploy/image-check.sh builds it first).

`serve` runs in a container on the host network against this machine's RabbitMQ (a vhost of
its own) and PostgreSQL (a database of its own), a SeaweedFS of its own for the datasets, the
models and the MLflow artifacts, and an `mlflow server` of its own (as in deploy/docker-compose.yml,
artifacts proxied to S3). Prints one line per check; exits 1 when any fails. Removes its container, vhost,
database and SeaweedFS at the end, whatever happened.

    .venv/bin/python -m tests.deploy.image_check --image heimdall-training:check --run-id ID
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from tests.support.broker import Tap, publish, rabbitmqctl
from tests.support.servers import BUCKETS, Postgres, free_port, mlflow_server, seaweedfs
from tests.support.service_stack import TINY_TRAINING

DOCKER = "/usr/bin/docker"
DATASET_ID, SESSIONS = "image-check", 240
LONG_JOB = {"epochs": 400, "patience": 400}  # still running when `docker stop` comes
STOP_GRACE_S = 90  # as deploy/docker-compose.yml's stop_grace_period: longer than HEIMDALL_SHUTDOWN_GRACE_S
IMAGE_USER = "10001:10001"
REGISTER_TIMEOUT_S = 900  # a tiny job takes ~30 s on an idle machine; a shared 2-core one can be far slower


class Checks:
    def __init__(self):
        self.failed: list[str] = []

    def report(self, name: str, ok: bool, detail: str) -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            self.failed.append(name)
        return ok


def docker(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout_s)


@contextmanager
def vhost():
    name = f"heimdall-image-check-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    finally:
        rabbitmqctl("delete_vhost", name)


@contextmanager
def database():
    """A database of its own, reached over loopback TCP as a container on the host network reaches it."""
    server = Postgres()
    try:
        name = urlparse(server.create_database()).path.lstrip("/")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        server.close()  # drops it, connections and all


def state_dir(tmp: Path) -> Path:
    """The container's state volume as a host folder, owned by the image's user, private to it."""
    state = tmp / "state"
    state.mkdir(mode=0o750)
    uid, gid = map(int, IMAGE_USER.split(":"))
    os.chown(state, uid, gid)
    return state


def env_file(tmp: Path, env: dict[str, str]) -> Path:
    """Secrets go to the container through a private file, not on a command line."""
    path = tmp / "container.env"
    path.touch(mode=0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return path


def container_env(s3, amqp_url: str, job_store_url: str, mlflow_url: str, http_port: int,
                  run_id: str) -> dict[str, str]:
    return {
        "HEIMDALL_AMQP_URL": amqp_url, "HEIMDALL_JOB_STORE_URL": job_store_url,
        "HEIMDALL_MLFLOW_TRACKING_URI": mlflow_url,
        "HEIMDALL_DATASET_ROOT_URI": f"s3://heimdall-datasets/{run_id}",
        "HEIMDALL_MODELS_URI": f"s3://heimdall-models/{run_id}",
        "HEIMDALL_CHECKPOINTS_URI": f"s3://heimdall-models/{run_id}-checkpoints",
        "HEIMDALL_S3__ENDPOINT_URL": s3.endpoint_url, "HEIMDALL_S3__ACCESS_KEY_ID": s3.access_key_id,
        "HEIMDALL_S3__SECRET_ACCESS_KEY": s3.secret_access_key,
        "HEIMDALL_DEFAULT_TRAINING": json.dumps(TINY_TRAINING), "HEIMDALL_OPS_ALLOWED_USERS": '["guest"]',
        "HEIMDALL_PROGRESS_INTERVAL_S": "0.5", "HEIMDALL_HTTP_PORT": str(http_port)}


def dataset_ready(manifest: dict, uri: str) -> dict:
    """The neighbours' example (shared/contracts/examples/events/dataset.ready.json), for our dataset."""
    dataset_id, version = manifest["dataset_id"], manifest["version"]
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "heimdall/acquisition",
            "type": "heimdall.dataset.ready.v1", "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "subject": f"{dataset_id}/v{version}", "datacontenttype": "application/json",
            "data": {"dataset_id": dataset_id, "version": version, "uri": uri,
                     "sessions": SESSIONS, "labelled_sessions": SESSIONS}}


def training_requested(dataset_id: str, version: int, overrides: dict) -> dict:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "heimdall/ops",
            "type": "heimdall.training.requested.v1", "time": datetime.now(timezone.utc).isoformat(),
            "data": {"dataset_id": dataset_id, "version": version, "reason": "image check", "overrides": overrides}}


def s3_bytes(s3, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


class Run:
    """One image under check: its container, its servers and its tap on heimdall.events."""

    def __init__(self, image: str, run_id: str, s3, amqp_url: str, job_store_url: str, mlflow_url: str, tmp: Path):
        self.image, self.run_id, self.s3, self.amqp_url, self.tmp = image, run_id, s3, amqp_url, tmp
        self.http_port = free_port()
        self.state = state_dir(tmp)
        self.env = env_file(tmp, container_env(s3, amqp_url, job_store_url, mlflow_url, self.http_port, run_id))
        self.name = f"heimdall-image-check-{run_id}"
        self.tap: Tap | None = None

    def docker_run(self, *args: str, detach: bool = False) -> subprocess.CompletedProcess:
        return docker("run", *(["-d"] if detach else ["--rm"]), "--label", f"heimdall-image-check={self.run_id}",
                      "--network", "host", "--env-file", str(self.env), *args)

    def synth(self) -> tuple[str, dict]:
        root = f"s3://heimdall-datasets/{self.run_id}"  # HEIMDALL_DATASET_ROOT_URI
        done = self.docker_run("--no-healthcheck", self.image, "synth", "--out", root, "--dataset_id", DATASET_ID,
                               "--sessions", str(SESSIONS), "--samples_per_capture", "256", "--shard_size", "128",
                               "--seed", "7")
        if done.returncode != 0:
            raise RuntimeError(f"synth exited {done.returncode}: {done.stderr[-2000:]}")
        uri = done.stdout.strip().splitlines()[-1].rstrip("/") + "/"
        return uri, json.loads(s3_bytes(self.s3, uri + "dataset.json"))

    def start(self) -> None:
        """`serve`, the image's default command; health probed every 2 s instead of 30 s, same command."""
        done = self.docker_run("--name", self.name, "-v", f"{self.state}:/var/lib/heimdall", "--health-interval", "2s",
                               self.image, detach=True)
        if done.returncode != 0:
            raise RuntimeError(f"docker run exited {done.returncode}: {done.stderr[-2000:]}")
        self.tap = Tap(self.amqp_url)

    def inspect(self, template: str) -> str:
        return docker("inspect", "-f", template, self.name).stdout.strip()

    def wait_ready(self, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.inspect("{{.State.Status}}") != "running":
                raise RuntimeError(f"the container stopped: {self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as response:
                    return response.read().decode().strip()
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"/readyz did not answer within {timeout_s}s: {self.logs()}")

    def wait_health(self, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while (status := self.inspect("{{.State.Health.Status}}")) != "healthy" and time.monotonic() < deadline:
            time.sleep(1)
        return status

    def logs(self, lines: int = 30) -> str:
        done = docker("logs", "--tail", str(lines), self.name)
        return (done.stdout + done.stderr)[-4000:]

    def log_lines(self) -> list[dict]:
        done = docker("logs", self.name)
        text = done.stdout + done.stderr
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def remove(self) -> None:
        docker("rm", "-f", self.name)


def check_non_root(run: Run, checks: Checks) -> None:
    user = docker("image", "inspect", "-f", "{{.Config.User}}", run.image).stdout.strip()
    uid = docker("exec", run.name, "id", "-u").stdout.strip()
    checks.report("non-root", user == IMAGE_USER and uid not in ("", "0"), f"image USER {user}, serve runs as uid {uid}")


def check_model_registered(run: Run, checks: Checks, uri: str, manifest: dict) -> None:
    event = dataset_ready(manifest, uri)
    publish(run.amqp_url, event, "dataset.ready")
    started = time.monotonic()
    registered = run.tap.wait_for("model.registered", timeout_s=REGISTER_TIMEOUT_S)[0]["data"]
    checks.report("model.registered", registered["dataset"]["uri"] == uri,
                  f"{registered['model_name']} v{registered['model_version']} {time.monotonic() - started:.0f} s "
                  f"after dataset.ready {event['id'][:8]}")
    onnx = s3_bytes(run.s3, registered["onnx"]["uri"])
    digest = hashlib.sha256(onnx).hexdigest()
    checks.report("model.onnx", digest == registered["onnx"]["sha256"] and len(onnx) == registered["onnx"]["bytes"],
                  f"{registered['onnx']['uri']}: {len(onnx)} bytes, sha256 {digest[:12]}… as the event says")
    artifacts = [o["Key"] for o in run.s3.client().list_objects_v2(Bucket="mlflow", Prefix=run.run_id)
                 .get("Contents", [])]
    checks.report("mlflow artifacts in S3", any(k.endswith("/model.onnx") for k in artifacts),
                  f"{len(artifacts)} objects under s3://mlflow/{run.run_id}/")


def check_stop_checkpoints(run: Run, checks: Checks, manifest: dict) -> None:
    publish(run.amqp_url, training_requested(manifest["dataset_id"], manifest["version"], LONG_JOB),
            "training.requested", user_id="guest")
    job_id = run.tap.wait_for("training.accepted", count=2)[-1]["data"]["job_id"]
    run.tap.wait_for("training.progress", job_id=job_id, timeout_s=120)
    started = time.monotonic()
    stopped = docker("stop", "-t", str(STOP_GRACE_S), run.name, timeout_s=STOP_GRACE_S + 30)
    stop_s = time.monotonic() - started
    exit_code = run.inspect("{{.State.ExitCode}}")
    requeued = [line["job_id"] for line in run.log_lines() if line.get("event") == "requeued"]
    checkpoint = f"s3://heimdall-models/{run.run_id}-checkpoints/{job_id}/last.ckpt"  # HEIMDALL_CHECKPOINTS_URI
    try:
        size = len(s3_bytes(run.s3, checkpoint))
    except Exception as exc:  # noqa: BLE001 (reported as the check's detail)
        size = f"missing ({type(exc).__name__})"
    checks.report("docker stop", stopped.returncode == 0 and exit_code == "0" and stop_s < STOP_GRACE_S,
                  f"exit code {exit_code} after {stop_s:.1f} s (grace {STOP_GRACE_S} s)")
    checks.report("checkpointed", requeued == [job_id] and isinstance(size, int),
                  f"job {job_id[:8]} requeued {requeued == [job_id]}, {checkpoint} {size}")


def run_checks(run: Run, checks: Checks) -> None:
    uri, manifest = run.synth()
    checks.report("synth", manifest["dataset_id"] == DATASET_ID, f"{uri} written by the image's own synth")
    run.start()
    checks.report("ready", run.wait_ready() == "ready", f"/readyz on 127.0.0.1:{run.http_port} (host network)")
    check_non_root(run, checks)
    check_model_registered(run, checks, uri, manifest)
    health = run.wait_health()
    checks.report("healthy", health == "healthy", f"docker health status {health} (HEALTHCHECK serve --check)")
    check_stop_checkpoints(run, checks, manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--run-id", default=uuid.uuid4().hex[:8])
    args = parser.parse_args(argv)
    checks = Checks()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="heimdall-image-check-")))
        s3 = stack.enter_context(seaweedfs(tmp / "seaweedfs", BUCKETS))
        run_id = f"image-check-{args.run_id}"
        (tmp / "mlflow").mkdir()
        mlflow_url = stack.enter_context(mlflow_server(tmp / "mlflow", s3, f"s3://mlflow/{run_id}"))
        amqp_url, job_store_url = stack.enter_context(vhost()), stack.enter_context(database())
        run = Run(args.image, run_id, s3, amqp_url, job_store_url, mlflow_url, tmp)
        stack.callback(run.remove)
        try:
            run_checks(run, checks)
        except (AssertionError, RuntimeError, subprocess.TimeoutExpired) as exc:
            checks.report("run", False, f"{type(exc).__name__}: {str(exc)[-1500:]}")
            print(run.logs(), file=sys.stderr)
    print(f"{'FAIL' if checks.failed else 'ok  '} image: {len(checks.failed)} check(s) failed {checks.failed}")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
