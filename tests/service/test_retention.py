"""The purge: finished jobs, their events and checkpoints, old event ids and unused cache go;
live jobs and anything younger than the retention stay. A real job store (SQLite file)."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from pydantic import ValidationError

from service.jobs.events import cancelled_message, registered_message
from service.jobs.store import JobStatus, JobStore, utcnow
from service.jobs.tables import processed_events
from service.retention import purge
from foundation.settings import Settings
from tests.support.jobs import VALID_RESULT, accept

DAY = 86400.0


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path / "state", retention_s=2 * DAY, cache_retention_s=DAY)


def test_finished_jobs_go_after_the_retention_with_their_events_and_checkpoints(settings, store):
    long_ago = utcnow() - timedelta(days=5)
    old = accept(store, trigger_kind="manual", dataset_version=1, now=long_ago)
    claimed = store.claim_next("w", 30, now=long_ago)
    store.finish_succeeded(old.id, "w", VALID_RESULT, [registered_message(claimed, VALID_RESULT)], now=long_ago)
    # queued for days (a long min_retrain_interval): never purged
    live = accept(store, trigger_kind="manual", dataset_version=2, now=long_ago)
    recent = accept(store, trigger_kind="manual", dataset_version=3, now=utcnow())
    store.mark_published([m.id for m in store.read.pending_messages(100)])
    checkpoints = settings.job_checkpoint_dir(old.id)
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"x")

    purged = purge(store, settings)

    assert (purged.jobs, purged.checkpoints) == (1, 1) and not checkpoints.exists()
    assert store.read.get(old.id) is None
    assert store.read.get(live.id).status is JobStatus.QUEUED and store.read.get(recent.id) is not None
    with store.transaction(write=False) as conn:
        events = conn.execute(processed_events.select()).all()
    assert len(events) == 1  # only the recent trigger's id is still remembered
    assert purged.events == 2 and purged.outbox_rows == 2  # the old job's accepted + registered


def test_a_job_whose_events_are_not_yet_published_is_kept(settings, store):
    long_ago = utcnow() - timedelta(days=5)
    job = accept(store, trigger_kind="manual", now=long_ago)
    store.claim_next("w", 30, now=long_ago)
    store.finish_cancelled(job.id, "w", "test", [cancelled_message(job, "test")], now=long_ago)
    assert purge(store, settings).jobs == 0
    assert store.read.get(job.id).status is JobStatus.CANCELLED
    assert sorted(m.routing_key for m in store.read.pending_messages(100)) == ["training.accepted",
                                                                              "training.cancelled"]


def test_unused_cache_files_and_crashed_staging_folders_go(settings):
    cache = settings.cache_dir
    used, unused = cache / "sha256" / "ab" / ("ab" * 32), cache / "sha256" / "cd" / ("cd" * 32)
    staging = cache / "staging" / "open-crashed"
    old_scores = cache / "baselines" / ("ef" * 32 + ".npz")
    old_graph, used_graph = cache / "onnx-graphs" / ("01" * 32 + ".onnx"), cache / "onnx-graphs" / ("23" * 32 + ".onnx")
    for path in (used, unused, old_scores, old_graph, used_graph):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    staging.mkdir(parents=True)
    old = time.time() - 3 * DAY
    for path in (unused, staging, old_scores, old_graph):
        os.utime(path, (old, old))
    store = JobStore(settings.job_store_url)
    store.migrate()
    assert purge(store, settings).cache_files == 4
    assert used.exists() and not unused.exists() and not staging.exists() and not old_scores.exists()
    assert used_graph.exists() and not old_graph.exists()


def test_a_cache_entry_in_use_stays_by_its_marker_and_goes_with_it(settings):
    cache = settings.cache_dir
    used, unused = cache / "sha256" / "ab" / ("ab" * 32), cache / "sha256" / "cd" / ("cd" * 32)
    used_marker, unused_marker = cache / "verified" / "ab" / ("ab" * 32), cache / "verified" / "cd" / ("cd" * 32)
    orphan = cache / "verified" / "ef" / ("ef" * 32)
    for path in (used, unused, used_marker, unused_marker, orphan):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    old = time.time() - 3 * DAY
    for path in (used, unused, unused_marker, orphan):  # a verified file keeps its old mtime; use touches its marker
        os.utime(path, (old, old))
    store = JobStore(settings.job_store_url)
    store.migrate()
    assert purge(store, settings).cache_files == 1
    assert used.exists() and used_marker.exists()
    assert not unused.exists() and not unused_marker.exists() and not orphan.exists()


def test_the_retention_cannot_be_shorter_than_a_day():
    with pytest.raises(ValidationError, match="retention_s"):
        Settings(retention_s=3600)


def test_what_a_killed_write_left_in_the_scores_and_graphs_folders_goes_after_a_day(settings):
    """A kill -9 mid-write skips the writer's own clean-up: a graph's `.tmp-*` folder, a score's
    `.part` file. Old ones go; a fresh one may be a write in progress and stays."""
    cache = settings.cache_dir
    old_graph_write, new_graph_write = cache / "onnx-graphs" / ".tmp-killed", cache / "onnx-graphs" / ".tmp-running"
    old_score_write, new_score_write = cache / "baselines" / "tmpkilled.part", cache / "baselines" / "tmprunning.part"
    for folder in (old_graph_write, new_graph_write):
        folder.mkdir(parents=True)
        (folder / ("01" * 32 + ".onnx")).write_bytes(b"x")
    old_score_write.parent.mkdir(parents=True)
    for path in (old_score_write, new_score_write):
        path.write_bytes(b"x")
    old = time.time() - 3 * DAY
    for path in (old_graph_write, old_score_write):
        os.utime(path, (old, old))
    store = JobStore(settings.job_store_url)
    store.migrate()
    assert purge(store, settings).cache_files == 2
    assert not old_graph_write.exists() and not old_score_write.exists()
    assert new_graph_write.exists() and new_score_write.exists()


def test_a_finished_job_whose_checkpoint_a_queued_export_job_needs_is_kept_until_that_job_is_over(settings, store):
    long_ago = utcnow() - timedelta(days=5)
    trained = accept(store, trigger_kind="manual", dataset_version=1, now=long_ago)
    claimed = store.claim_next("w", 30, now=long_ago)
    store.finish_succeeded(trained.id, "w", VALID_RESULT, [registered_message(claimed, VALID_RESULT)], now=long_ago)
    checkpoints = settings.job_checkpoint_dir(trained.id)
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"x")
    export = accept(store, trigger_kind="manual", dataset_version=1, export_only=True, now=long_ago,
                    checkpoint_uri=f"file://{checkpoints}/last.ckpt")  # `ops request --resume_job_id` gives this
    store.mark_published([m.id for m in store.read.pending_messages(100)])

    assert purge(store, settings).checkpoints == 0
    assert (checkpoints / "last.ckpt").is_file() and store.read.get(trained.id) is not None

    claimed = store.claim_next("w", 30, now=long_ago)
    assert claimed.id == export.id
    store.finish_succeeded(export.id, "w", VALID_RESULT, [registered_message(claimed, VALID_RESULT)], now=long_ago)
    store.mark_published([m.id for m in store.read.pending_messages(100)])
    assert purge(store, settings).jobs == 2 and not checkpoints.exists()  # needed by no live job any more
