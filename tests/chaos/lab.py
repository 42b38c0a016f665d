"""The chaos run's laboratory and its audit: its own servers and datasets, one stack (a vhost and a
job store database) per trial, the record of a trial, and the promises every trial is audited
against (every accepted job ends exactly once, one model version per idempotency key, one
`model.registered` per job, no outbox event missing from the bus, no job left queued or running)."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from messages import constants as wire
from training.datasets.synth import SynthConfig, synthesize_dataset
from foundation.object_store import S3Credentials
from tests.chaos.event_log import OUTPUT_KEYS, EventLog
from tests.support.servers import BUCKETS, Postgres, mlflow_server, seaweedfs, seaweedfs_ports
from tests.support.service_stack import Stack

SETTLE_S = 300
DATASETS_ROOT = "s3://heimdall-datasets/chaos"


class Skip(Exception):
    """This machine cannot inject the fault (say, no tmpfs): the row says why instead of a verdict."""


@dataclass
class Trial:
    """One run of a fault: the fault's own checks (`problems`) and the common audit."""

    name: str
    seed: str
    problems: list[str] = field(default_factory=list)
    recovery_s: float | None = None
    audit: dict = field(default_factory=dict)
    wall_s: float = 0.0
    skipped: str | None = None  # why the fault could not be injected here

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)

    @property
    def ok(self) -> bool:
        if self.skipped is not None:
            return not self.problems
        a = self.audit
        return not self.problems and a.get("ended_once") == a.get("accepted") and a.get("versions_per_key", 0) <= 1 \
            and a.get("registered_per_job", 0) <= 1 and a.get("lost", 1) == 0 and a.get("stuck", 1) == 0


class Lab:
    """The chaos run's own servers and datasets; builds one stack (vhost + database) per trial."""

    def __init__(self, tmp: Path, exits: ExitStack):
        self.tmp, self.exits = tmp, exits
        self.scale = 1.0  # --trials-scale, for faults whose size is not a trial count
        self.postgres = Postgres()
        exits.callback(self.postgres.close)
        self.s3_ports = seaweedfs_ports()
        self.s3 = self._start_s3()
        self.mlflow_port = None
        self.mlflow_url = self._start_mlflow()
        credentials = S3Credentials(self.s3.endpoint_url, self.s3.access_key_id, self.s3.secret_access_key)
        self.datasets = {name: synthesize_dataset(
            SynthConfig(sessions=240, seed=7 + i, samples_per_capture=256, shard_size=128, dataset_id=name),
            DATASETS_ROOT, credentials=credentials) for i, name in enumerate(("chaos-a", "chaos-b"))}
        self.versions: dict[tuple[str, int], str] = {}  # further versions of the datasets, made when a fault asks
        self.stacks: list[Stack] = []
        self.cleanups: list[Callable[[], None]] = []  # what a fault changed outside its stack, undone after it
        self.made, self.trial_seed = 0, "setup"

    def _start_s3(self):
        self._s3_exits = ExitStack()
        self.exits.callback(self._s3_exits.close)
        (self.tmp / "s3").mkdir(exist_ok=True)
        return self._s3_exits.enter_context(seaweedfs(self.tmp / "s3", BUCKETS, self.s3_ports))

    def _start_mlflow(self) -> str:
        self._mlflow_exits = ExitStack()
        self.exits.callback(self._mlflow_exits.close)
        (self.tmp / "mlflow").mkdir(exist_ok=True)
        url = self._mlflow_exits.enter_context(mlflow_server(self.tmp / "mlflow", self.s3, "s3://mlflow/artifacts",
                                                             self.mlflow_port))
        self.mlflow_port = int(url.rsplit(":", 1)[1])
        return url

    def dataset(self, name: str, version: int) -> str:
        """The URI of `name` at `version`: version 1 is made at start-up, a later one the first time it is asked for."""
        if version == 1:
            return self.datasets[name]
        if (name, version) not in self.versions:
            credentials = S3Credentials(self.s3.endpoint_url, self.s3.access_key_id, self.s3.secret_access_key)
            seed = 7 + sorted(self.datasets).index(name) + 100 * version
            self.versions[name, version] = synthesize_dataset(
                SynthConfig(sessions=240, seed=seed, samples_per_capture=256, shard_size=128, dataset_id=name),
                DATASETS_ROOT, version=version, credentials=credentials)
        return self.versions[name, version]

    def stop_s3(self) -> None:
        self._s3_exits.close()

    def start_s3(self) -> None:
        self._start_s3()

    def stop_mlflow(self) -> None:
        self._mlflow_exits.close()

    def start_mlflow(self) -> None:
        self._start_mlflow()

    def stack(self, keys: tuple[str, ...] = OUTPUT_KEYS, **env: str) -> Stack:
        self.made += 1  # the folder names the trial, so a failing trial's serve logs are easy to find
        for attempt in range(5):  # other sessions' Vhost() re-creates the shared intruder user: retry the race
            try:
                stack = Stack(self.tmp / f"{self.trial_seed}-stack{self.made}", self.s3, self.mlflow_url,
                              self.postgres)
                break
            except subprocess.CalledProcessError:
                if attempt == 4:
                    raise
                time.sleep(2)
        stack.tmp.mkdir()
        (stack.tmp / "tmp").mkdir()  # TMPDIR of serve and its child: where export writes model.onnx
        stack.env.update({"TMPDIR": str(stack.tmp / "tmp"),
                          "HEIMDALL_ALLOWED_DATASET_LOCATIONS": json.dumps([DATASETS_ROOT]), **env})
        stack.tap = EventLog(stack.vhost.url(), keys)
        self.stacks.append(stack)
        return stack

    def close_stacks(self) -> None:
        for stack in self.stacks:
            try:
                stack.close()
            except Exception as exc:  # the vhost may be gone with a broker fault; the next run uses a new one
                print(f"stack cleanup: {exc}")
        self.stacks.clear()
        while self.cleanups:  # after the stacks: a mount is unmounted once serve is gone
            try:
                self.cleanups.pop()()
            except Exception as exc:
                print(f"fault cleanup: {exc}")


def settle(stack: Stack, timeout_s: float = SETTLE_S) -> None:
    """Wait until every accepted job has ended and every outbox row has reached the bus."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        a = audit(stack, mlflow=False)
        if a["ended_once"] >= a["accepted"] and a["stuck"] == 0 and a["lost"] == 0:
            return
        time.sleep(1)


def audit(stack: Stack, mlflow: bool = True) -> dict:
    """The promises of events.md, counted by event id, for every job this stack accepted."""
    tap: EventLog = stack.tap
    accepted = {e["data"]["job_id"] for e in tap.events(wire.TRAINING_ACCEPTED)}
    registered = Counter(e["data"]["job_id"] for e in tap.events(wire.MODEL_REGISTERED))
    final = registered + Counter(e["data"]["job_id"] for e in tap.events(wire.TRAINING_CANCELLED)) + Counter(
        e["data"]["job_id"] for e in tap.events(wire.TRAINING_FAILED) if not e["data"]["retryable"])
    seen = {e["id"] for e in tap.events()}
    keys = ",".join(repr(k) for k in OUTPUT_KEYS)
    outbox = [r[0] for r in query(stack, f"select id from outbox where routing_key in ({keys})")]
    stuck = query(stack, "select count(*) from jobs where status in ('queued', 'running')")[0][0]
    result = {"accepted": len(accepted), "ended_once": sum(final[j] == 1 for j in accepted),
              "registered_per_job": max(registered.values(), default=0), "lost": sum(i not in seen for i in outbox),
              "stuck": stuck}
    if mlflow:
        result["versions_per_key"] = versions_per_key(stack)
    return result


def query(stack: Stack, sql: str, **params) -> list[tuple]:
    """Rows from the stack's job store database."""
    engine = sa.create_engine(stack.env["HEIMDALL_JOB_STORE_URL"])
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def execute(stack: Stack, sql: str, **params) -> None:
    """Change the stack's job store database (committed), as an operator or a fault would."""
    engine = sa.create_engine(stack.env["HEIMDALL_JOB_STORE_URL"])
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()


def versions_per_key(stack: Stack) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(stack.env["HEIMDALL_MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions(f"name='{stack.env['HEIMDALL_MODEL_NAME']}'")
    return max(Counter(v.tags.get("idempotency_key") for v in versions).values(), default=0)
