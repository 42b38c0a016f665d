"""The steps the faults are made of: announce a dataset, wait for a job to reach a phase or to end,
read what serve logged, find serve's training child, speak to PostgreSQL as its superuser, start a
serve that died again, and time the recovery."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from messages import constants as wire
from tests.chaos.lab import Lab, Trial
from tests.support.service_stack import TINY_TRAINING, ServiceProcess, Stack, dataset_ready, wait_until

PHASES = ("claim", "fit", "export", "register", "publish")
FINAL = (wire.MODEL_REGISTERED, wire.TRAINING_CANCELLED)


def announce(lab: Lab, stack: Stack, name: str = "chaos-a") -> str:
    """Publish dataset.ready; returns the id of the job it was accepted as."""
    event = dataset_ready(name, 1, lab.datasets[name])
    stack.publish(event, wire.DATASET_READY)
    return stack.tap.wait_for(wire.TRAINING_ACCEPTED, trigger_id=event["id"], timeout_s=60)[0]["data"]["job_id"]


def long_training(epochs: int) -> str:
    """HEIMDALL_DEFAULT_TRAINING for a job that runs long enough to be hit mid-fit."""
    return json.dumps({**TINY_TRAINING, "epochs": epochs, "patience": epochs})


def logged(service: ServiceProcess, event: str, **fields) -> bool:
    return any(line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
               for line in service.log_lines())


def ended(stack: Stack, job_id: str) -> bool:
    return any(stack.tap.events(key, job_id=job_id) for key in FINAL) or any(
        not f["data"]["retryable"] for f in stack.tap.events(wire.TRAINING_FAILED, job_id=job_id))


def wait_end(stack: Stack, job_id: str, timeout_s: float = 300) -> bool:
    return wait_until(lambda: ended(stack, job_id), timeout_s, poll_s=0.5)


def reach_phase(lab: Lab, stack: Stack, service: ServiceProcess, phase: str, job_id: str) -> bool:
    """Wait until the job is in `phase` (seen from outside: logs, the bus, the child's files, S3)."""
    bucket, _, prefix = stack.env["HEIMDALL_MODELS_URI"].removeprefix("s3://").partition("/")
    client = lab.s3.client()
    checks = {
        "claim": lambda: logged(service, "claimed", job_id=job_id),
        "fit": lambda: bool(stack.tap.events(wire.TRAINING_PROGRESS, job_id=job_id)),
        "export": lambda: any((stack.tmp / "tmp").glob("*/model.onnx")),
        "register": lambda: client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0) > 0,
        "publish": lambda: logged(service, "succeeded", job_id=job_id),
    }
    deadline, polls = time.monotonic() + 180, 0
    while time.monotonic() < deadline:  # the phase check is cheap and frequent; asking the bus is not
        if checks[phase]():
            return not ended(stack, job_id)
        polls += 1
        if polls % 40 == 0 and ended(stack, job_id):
            return False
        time.sleep(0.05)
    return False


def revive(stack: Stack, service: ServiceProcess, trial: Trial, name: str = "a") -> ServiceProcess:
    """A serve that died under the fault is a finding; start it again so the job can still end."""
    if service.proc.poll() is None:
        return service
    trial.problems.append(f"serve exited {service.proc.returncode} under the fault (log {service.log})")
    return stack.start(name)


def ready_again(service: ServiceProcess, timeout_s: float = 60) -> bool:
    return wait_until(lambda: service.get("/readyz").startswith("ready"), timeout_s, poll_s=0.5)


def recovery(stack: Stack, job_id: str, since: float) -> float | None:
    arrived = stack.tap.first_after(since, job_id)
    return None if arrived is None else arrived - since


def children(pid: int) -> list[int]:
    """The direct children of a process (every thread's)."""
    return [int(k) for task in Path(f"/proc/{pid}/task").glob("*/children") for k in task.read_text().split()]


def training_child(service: ServiceProcess) -> int | None:
    """The pid of serve's training child (`python -m training`, a warm spare's too), if it has one now.
    Only one exists while a job runs: the next spare is started once the job has ended."""
    for pid in children(service.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"training" in argv and b"-m" in argv:
            return pid
    return None


def psql(sql: str, database: str = "postgres") -> str:
    """Run SQL as PostgreSQL's superuser (what an operator or a failing network does to the server)."""
    return subprocess.run(["su", "postgres", "-c", f'psql -qAt -d {database} -c "{sql}"'], check=True,
                          capture_output=True, text=True, timeout=30).stdout


def database_of(stack: Stack) -> str:
    """The job store's database name (the URL's query names the socket folder, slashes and all)."""
    from sqlalchemy.engine import make_url

    return make_url(stack.env["HEIMDALL_JOB_STORE_URL"]).database


def terminate_backends(database: str) -> int:
    """Close every connection to `database` from the server's side; how many there were."""
    out = psql(f"select pg_terminate_backend(pid) from pg_stat_activity where datname = '{database}'")
    return sum(line == "t" for line in out.splitlines())
