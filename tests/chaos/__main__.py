"""The chaos report: real `serve` processes under injected faults, and whether every promise held.

    .venv/bin/python -m tests.chaos [--seed 1] [--trials-scale 1.0] [--fault kill-9 --fault fuzz ...]

Starts its own SeaweedFS, `mlflow server` and PostgreSQL databases (so that stopping them
disturbs nothing else), a throwaway RabbitMQ vhost per trial, and runs the faults of
`tests/chaos/faults.py` against `heimdall-training serve`. Each trial is audited the same way:
every accepted job must end exactly once (`model.registered`, a final `training.failed` or
`training.cancelled`, counted by CloudEvent id since delivery is at least once), one model
version per idempotency key, one `model.registered` per job, no outbox event missing from the
bus, no job left queued or running. Writes `reports/chaos.md`; a failing row names the trial's
seed, so `--fault NAME --seed S` replays it. A harness, not a test: it restarts shared RabbitMQ.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import statistics
import tempfile
import time
import traceback
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from messages import constants as wire
from training.datasets.synth import SynthConfig, synthesize_dataset
from foundation.object_store import S3Credentials
from tests.chaos.messages import OUTPUT_KEYS, EventLog
from tests.support.servers import Postgres, mlflow_server, seaweedfs, seaweedfs_ports
from tests.e2e.test_service import Stack

BUCKETS = ["mlflow", "heimdall-datasets", "heimdall-models"]
SETTLE_S = 300
DATASETS_ROOT = "s3://heimdall-datasets/chaos"


@dataclass
class Trial:
    """One run of a fault: the fault's own checks (`problems`) and the common audit."""

    name: str
    seed: str
    problems: list[str] = field(default_factory=list)
    recovery_s: float | None = None
    audit: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)

    @property
    def ok(self) -> bool:
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
        self.stacks: list[Stack] = []
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


def versions_per_key(stack: Stack) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(stack.env["HEIMDALL_MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions(f"name='{stack.env['HEIMDALL_MODEL_NAME']}'")
    return max(Counter(v.tags.get("idempotency_key") for v in versions).values(), default=0)


def run_trial(lab: Lab, fault, index: int, seed: int) -> Trial:
    import random

    trial = Trial(fault.name, f"{seed}-{fault.name}-{index}")
    started = time.monotonic()
    lab.trial_seed = trial.seed
    try:
        stack = fault.run(lab, random.Random(trial.seed), trial, index)
        settle(stack)
        trial.audit = audit(stack)
    except Exception as exc:
        trial.problems.append(f"harness: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        lab.close_stacks()
    trial.wall_s = time.monotonic() - started
    print(f"{trial.name} #{index}: {'ok' if trial.ok else 'FAIL'} {trial.audit} {trial.problems} "
          f"recovery={trial.recovery_s} wall={trial.wall_s:.0f}s", flush=True)
    return trial


def row(fault, trials: list[Trial], args) -> str:
    total = lambda key: sum(t.audit.get(key, 0) for t in trials)  # noqa: E731
    peak = lambda key: max((t.audit.get(key, 0) for t in trials), default=0)  # noqa: E731
    recovery = [t.recovery_s for t in trials if t.recovery_s is not None]
    rec = f"{statistics.median(recovery):.1f} / {max(recovery):.1f}" if recovery else "–"
    verdict = "**pass**" if trials and all(t.ok for t in trials) else "**FAIL**"
    return (f"| {fault.label} | {fault.trials_label(len(trials), args.trials_scale)} | {total('accepted')} | {total('ended_once')} | "
            f"{peak('versions_per_key')} | {peak('registered_per_job')} | {total('lost')} | {total('stuck')} | "
            f"{rec} | {sum(t.wall_s for t in trials):.0f} | {fault.must_hold} | {verdict} |")


def report(results: list[tuple], args, wall_s: float) -> str:
    lines = ["# Chaos report: every accepted job ends exactly once", "",
             f"`python -m tests.chaos --seed {args.seed} --trials-scale {args.trials_scale}"
             + "".join(f" --fault {f}" for f in args.fault or []) + f"`: wall time **{wall_s / 60:.1f} min** on "
             f"this 2-core machine, {time.strftime('%Y-%m-%d %H:%M')}, commit {git_head()}.", "",
             "Counts are per fault over all its trials; events are counted by CloudEvent id. *Versions per key* and "
             "*model.registered per job* are the maxima over the trials. *Lost*: outbox rows never seen on the bus. "
             "*Stuck*: jobs still queued or running at the end. *Recovery*: from the end of the fault to the next "
             "event about the affected job (median / max, s).", "",
             "| fault | trials | jobs accepted | ended exactly once | versions per key | model.registered per job "
             "| events lost | stuck jobs | recovery s | wall s | must hold | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             *[row(fault, trials, args) for fault, trials in results], ""]
    failed = [t for _, trials in results for t in trials if not t.ok]
    if failed:
        lines += ["## Trials that did not hold", "", *[
            f"- `{t.name}` trial seed `{t.seed}` (replay: `python -m tests.chaos --fault {t.name} --seed "
            f"{args.seed}`): {'; '.join(t.problems) or 'audit'}; audit {t.audit}" for t in failed], ""]
    return "\n".join(lines)


def git_head() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    from tests.chaos.faults import FAULTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trials-scale", type=float, default=1.0, help="fraction of each fault's trials (≥ 1 each)")
    parser.add_argument("--fault", action="append", choices=[f.name for f in FAULTS], help="only these (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("reports/chaos.md"))
    args = parser.parse_args()
    started = time.monotonic()
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="heimdall-chaos-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the servers and restores
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as exits:
        lab = Lab(workdir, exits)
        lab.scale = args.trials_scale
        for fault in FAULTS:
            if args.fault and fault.name not in args.fault:
                continue
            count = max(1, round(fault.trials * args.trials_scale))
            results.append((fault, [run_trial(lab, fault, i, args.seed) for i in range(count)]))
            args.out.write_text(report(results, args, time.monotonic() - started))  # so far, should it be cut short
    text = report(results, args, time.monotonic() - started)
    if all(t.ok for _, trials in results for t in trials):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept for the failing trials' serve logs: {workdir}")
    args.out.write_text(text)
    print(text)
    print(f"wall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
