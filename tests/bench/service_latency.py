"""Benchmark: what users feel between `dataset.ready` and `model.registered`, against `trainer.fit`.

    .venv/bin/python -m tests.bench.service_latency [--jobs 5] [--out reports/service_latency.md]

Starts the same real servers as the tests (SeaweedFS, mlflow server, a RabbitMQ vhost, a
PostgreSQL database) and one `serve`, then announces tiny datasets one at a time and waits for
each model (and, with the warm spare on, for the next spare's imports: `wait_for_spare`). Writes a Markdown report with medians; a benchmark, not a test: timings on a
shared 2-core machine are noisy, so it reports medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from service.jobs.store import JobStore
from foundation.object_store import S3Credentials
from training.datasets.synth import SynthConfig, synthesize_dataset
from tests.support.servers import BUCKETS, Postgres, mlflow_server, seaweedfs
from tests.support.service_stack import DATASETS_ROOT, Stack, dataset_ready


def when(event: dict) -> float:
    return datetime.fromisoformat(event["time"]).timestamp()


def wait_for_spare(stack: Stack, timeout_s: float = 300) -> float:
    """With the warm spare on, wait until the service's spare has done its imports (its /metrics gauge);
    seconds waited. Datasets arrive hours apart, so a job meets a ready spare; the service starts the
    next spare when a job ends, and announcing the next dataset at once would time the spare mid-import."""
    started = time.monotonic()
    if stack.env.get("HEIMDALL_WARM_SPARE", "true") == "true":
        while "heimdall_training_warm_spare_ready 1.0" not in stack.services[0].get("/metrics"):
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the warm spare was not ready after {timeout_s:.0f} s")
            time.sleep(0.2)
    return time.monotonic() - started


def measure(stack: Stack, uris: list[str]) -> list[dict]:
    rows = []
    store = JobStore(stack.env["HEIMDALL_JOB_STORE_URL"])
    for i, uri in enumerate(uris):
        spare_wait_s = wait_for_spare(stack)
        published = time.time()
        stack.publish(dataset_ready(f"bench-{i}", 1, uri), "dataset.ready")
        registered = stack.tap.wait_for("model.registered", count=i + 1, timeout_s=300)[-1]
        received = time.time()
        job_id = registered["data"]["job_id"]
        accepted = stack.tap.events("training.accepted", job_id=job_id)[0]
        started = stack.tap.events("training.started", job_id=job_id)[0]
        fit_s = store.read.get(job_id).result["training"]["fit_s"]
        rows.append({"total_s": received - published, "accept_s": when(accepted) - published,
                     "child_start_s": when(started) - when(accepted), "fit_s": fit_s,
                     "after_start_s": when(registered) - when(started), "spare_wait_s": spare_wait_s})
    return rows


def report(rows: list[dict], out: Path) -> str:
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    lines = [
        "# dataset.ready → model.registered for the tiny job", "",
        f"{len(rows)} jobs, one at a time; tiny preset, 240 sessions × 7 receivers × 256 samples, 3 epochs.",
        f"Measured {datetime.now():%Y-%m-%d %H:%M} on this machine (`python -m tests.bench.service_latency`).", "",
        "| step | median s |", "|---|---|",
        f"| publish → training.accepted (validate, record, ack) | {med['accept_s']:.2f} |",
        f"| accepted → training.started (child start: imports, dataset verification, MLflow run) "
        f"| {med['child_start_s']:.2f} |",
        f"| started → model.registered (fit, evaluate, export, parity, register) | {med['after_start_s']:.2f} |",
        f"| **publish → model.registered received** | **{med['total_s']:.2f}** |",
        f"| of which inside `trainer.fit` | {med['fit_s']:.2f} |", "",
        f"Ratio total / trainer.fit: **{med['total_s'] / med['fit_s']:.1f}×**; overhead "
        f"{med['total_s'] - med['fit_s']:.1f} s per job, which a real (hours-long) job amortises.", "",
        "| job | total s | fit s |", "|---|---|---|",
        *[f"| {i} | {r['total_s']:.2f} | {r['fit_s']:.2f} |" for i, r in enumerate(rows)],
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


@contextmanager
def servers(tmp: Path):
    """(S3 server, mlflow URL, PostgreSQL) for a benchmark, removed at the end."""
    for sub in ("s3", "mlflow"):
        (tmp / sub).mkdir(parents=True)
    postgres = Postgres()
    try:
        with seaweedfs(tmp / "s3", BUCKETS) as s3, mlflow_server(tmp / "mlflow", s3, "s3://mlflow/artifacts") as url:
            yield s3, url, postgres
    finally:
        postgres.close()


def tiny_datasets(s3, count: int) -> list[str]:
    """`count` tiny datasets in S3 (240 sessions × 7 receivers × 256 samples), `bench-0`, `bench-1`, ..."""
    credentials = S3Credentials(s3.endpoint_url, s3.access_key_id, s3.secret_access_key)
    return [synthesize_dataset(SynthConfig(sessions=240, seed=i, samples_per_capture=256, shard_size=128,
                                           dataset_id=f"bench-{i}"), DATASETS_ROOT, credentials=credentials)
            for i in range(count)]


def run_jobs(tmp: Path, s3, url: str, postgres, uris: list[str], env: dict[str, str] | None = None) -> list[dict]:
    """One `serve` (with `env` on top of the test stack's settings) running the jobs one at a time."""
    tmp.mkdir(parents=True)
    stack = Stack(tmp, s3, url, postgres)
    stack.env.update(env or {})
    try:
        stack.start()
        return measure(stack, uris)
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("reports/service_latency.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, servers(Path(tmp)) as (s3, url, postgres):
        print(report(run_jobs(Path(tmp) / "stack", s3, url, postgres, tiny_datasets(s3, args.jobs)), args.out))


if __name__ == "__main__":
    main()
