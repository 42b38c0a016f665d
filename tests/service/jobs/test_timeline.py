"""`jobs list` and `jobs show`: what an operator reads, built from a real job store (a SQLite
file and a real PostgreSQL 15) filled through the store's own transitions and the service's
own event builders, with injected times.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from messages import TrainingProgress, TrainingStarted, make_event
from foundation.child_protocol import Failure
from service.jobs.events import cancelled_message, failed_message, outbox, registered_message
from service.jobs.timeline import job_timeline, latest_progress
from service.ops_commands import job_report, jobs_table
from tests.support.jobs import accept

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc)
WORKER = "replica-a"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def start(store, minutes: float, run_id: str):
    job = store.claim_next(WORKER, 60, now=at(minutes))
    store.add_messages([outbox(make_event(TrainingStarted(job_id=job.id, attempt=job.attempt, mlflow_run_id=run_id)))],
                       job_id=job.id, now=at(minutes))
    return job


def progress(store, job, minutes: float, epoch: int, error_m: float, eta_s: float) -> None:
    event = make_event(TrainingProgress(job_id=job.id, epoch=epoch, max_epochs=40, eta_s=eta_s, metrics={
        "train_loss": 1.0, "val_loss": 1.0, "val_median_error_m": error_m}))
    store.add_messages([outbox(event)], job_id=job.id, now=at(minutes))


def registered_result(version: int) -> dict:
    uri = "s3://heimdall-models/models/heimdall-localization/3"
    return {"model": {"model_name": "heimdall-localization", "model_version": version, "promoted": True,
                      "aliases": ["candidate", "champion"], "model_uri": f"models:/heimdall-localization/{version}",
                      "onnx": {"uri": f"{uri}/model.onnx", "sha256": "ab" * 32, "bytes": 1000},
                      "card_uri": f"{uri}/model.json"},
            "metrics": {"median_error_m": 900.0, "p90_error_m": 2000.0, "coverage_1sigma": 0.4,
                        "coverage_2sigma": 0.86},
            "mlflow": {"run_id": "run-2"}}


@pytest.fixture
def lifecycle(store):
    """One job that failed (retryable), was retried and registered; one running; one queued."""
    done = accept(store, dataset_version=1, now=at(0))
    first = start(store, 1, "run-1")
    progress(store, first, 2, 1, 5000.0, 600)
    store.requeue(done.id, WORKER, not_before=at(4), messages=[failed_message(
        first, Failure(stage="data", error_type="StorageUnavailable", message="S3 timed out", retryable=True),
        retryable=True)],
        now=at(3))
    second = start(store, 5, "run-2")
    for epoch in (1, 2, 3):
        progress(store, second, 5 + epoch, epoch, 4000.0 - 1000 * epoch, 300)
    store.finish_succeeded(done.id, WORKER, registered_result(3), [registered_message(second, registered_result(3))],
                           now=at(10))
    accept(store, dataset_version=2, now=at(20))
    running = start(store, 21, "run-3")
    progress(store, running, 30, 12, 1234.0, 65)
    queued = accept(store, dataset_version=3, now=at(40))
    return done, running, queued


def test_list_shows_state_dataset_attempt_progress_and_age(store, lifecycle):
    done, running, queued = lifecycle
    table = jobs_table(store, None, 50, now=at(100)).splitlines()
    assert table[0].split() == ["JOB", "ID", "STATE", "DATASET", "TRY", "PROGRESS", "AGE"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert re.search(r"running\s+nw-italy-2m v2\s+1\s+epoch 12/40, val error 1\.23 km, ETA 1:05\s+1h$",
                     rows[running.id]), rows[running.id]
    assert re.search(r"succeeded\s+nw-italy-2m v1\s+2\s+epoch 3/40, val error 1\.00 km\s+1h$", rows[done.id])
    assert re.search(r"queued\s+nw-italy-2m v3\s+0\s+-\s+1h$", rows[queued.id])
    assert [line.split()[0] for line in table[1:]] == [queued.id, running.id, done.id]  # newest first


def test_show_tells_the_timeline_with_retries_and_where_the_model_and_run_are(store, lifecycle):
    done, _, _ = lifecycle
    report = job_report(store, done.id, now=at(100))
    timeline = [line.strip() for line in report.split("timeline (UTC)")[1].split("\n\n")[0].splitlines() if line]
    assert [re.sub(r"\s+", " ", line) for line in timeline] == [
        "2026-11-28 10:00:00 accepted nw-italy-2m v1, config c0ffee",
        "2026-11-28 10:01:00 started attempt 1, MLflow run run-1",
        "2026-11-28 10:02:00 progress epoch 1/40, val error 5.00 km",
        "2026-11-28 10:03:00 failed attempt 1, data: StorageUnavailable: S3 timed out (will retry)",
        "2026-11-28 10:05:00 started attempt 2, MLflow run run-2",
        "2026-11-28 10:08:00 progress epoch 3/40, val error 1.00 km (3 updates)",
        "2026-11-28 10:10:00 registered version 3 (candidate, champion)",
    ]
    assert report.startswith(f"job {done.id}: succeeded, attempt 2")
    assert "model      models:/heimdall-localization/3" in report
    assert "model.onnx s3://heimdall-models/models/heimdall-localization/3/model.onnx" in report
    assert "mlflow run run-2" in report


def test_a_final_failure_and_a_cancel_end_their_timelines(store):
    failed = accept(store, dataset_version=1, now=at(0))
    job = start(store, 1, None)
    store.finish_failed(failed.id, WORKER, {"stage": "train", "message": "NaN loss"}, [failed_message(
        job, Failure(stage="train", error_type="TrainingError", message="NaN loss", retryable=False),
        retryable=False)], now=at(2))
    cancelled = accept(store, dataset_version=2, now=at(3))
    store.request_cancel(cancelled.id, "wrong dataset", cancelled_message, now=at(4))
    failed_report = job_report(store, failed.id, now=at(5))
    assert "(final)" in failed_report.splitlines()[-4] and "mlflow run none yet" in failed_report
    assert "error      train: NaN loss" in failed_report
    assert job_report(store, cancelled.id, now=at(5)).split("timeline (UTC)")[1].splitlines()[-3].endswith(
        "cancelled    wrong dataset")


def test_an_unknown_job_shows_nothing_and_progress_reads_only_the_newest_event(store, lifecycle):
    done, running, queued = lifecycle
    assert job_report(store, "no-such-job", now=at(0)) is None
    newest = latest_progress(store, [done.id, running.id, queued.id])
    assert set(newest) == {done.id, running.id}
    assert (newest[done.id].epoch, newest[running.id].epoch) == (3, 12)
    assert [e.routing_key for e in job_timeline(store, queued.id)] == ["training.accepted"]


def test_the_jobs_commands_print_the_same_views(store_url, lifecycle):
    done, running, _ = lifecycle
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}, "HEIMDALL_JOB_STORE_URL": store_url}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cli", "jobs", *args], capture_output=True, text=True,
                              timeout=120, env=env)

    listing = cli("list", "--status", "running")
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()[1:]] == [running.id]
    shown = cli("show", done.id)
    assert shown.returncode == 0 and "registered   version 3 (candidate, champion)" in shown.stdout
    missing = cli("show", "no-such-job")
    assert missing.returncode == 1 and "no job no-such-job" in missing.stderr
