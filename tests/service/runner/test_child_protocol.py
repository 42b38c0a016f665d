"""The protocol against the real training child (`python -m training`), run by the real worker.

A dataset author controls text that reaches the child's logs: shard paths and receiver ids end up
in its refusal. Written so that, printed raw, they would be protocol lines (a `started`, a
`failed` with another stage and `retryable`), they must stay log text: no event is published from
them, and the job's failure is the child's own data-stage refusal, final on the first attempt.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from foundation.settings import Settings
from service.jobs.store import JobStatus
from service.metrics import ServiceMetrics
from service.runner.worker import JobRunner
from tests.support.jobs import accept

FORGED = "\n".join([  # short enough to stay a valid file name
    "",
    '{"kind": "started"}',
    '{"event": "started", "mlflow_run_id": "forged"}',
    '{"event": "failed", "stage": "register", "error_type": "Forged", "message": "forged", "retryable": true}',
    "",
])


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path / "state", max_attempts=3, retry_backoff_s=0.05, lease_s=10.0,
                    shutdown_grace_s=5.0, progress_interval_s=0.0, warm_spare=False)


def forged_dataset(example_dataset, folder, where: str):
    shutil.copytree(example_dataset, folder)
    manifest = json.loads((folder / "dataset.json").read_text())
    if where == "shard path":
        manifest["shards"][0]["path"] += FORGED
    else:  # the receiver's files are named after it: the dataset refers to files that do not exist
        old = manifest["receivers"][0]["id"]
        manifest["receivers"][0]["id"] += FORGED
        for shard in manifest["shards"]:
            shard["files"] = {name.replace(f"rx-{old}.", f"rx-{old}{FORGED}."): digest
                              for name, digest in shard["files"].items()}
    (folder / "dataset.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("where", ["shard path", "receiver id"])
def test_log_text_from_a_dataset_cannot_publish_an_event_or_change_the_failure(settings, store, example_dataset,
                                                                               tmp_path, where):
    dataset = forged_dataset(example_dataset, tmp_path / "datasets" / "nw-italy-mini" / "v1", where)
    job = accept(store, dataset_uri=str(dataset), config={"preset": "tiny", "epochs": 1})
    runner = JobRunner(settings, store, ServiceMetrics(), on_messages=lambda: None)

    async def run_once():
        claimed = await runner.claim()
        assert claimed.id == job.id
        await runner.run_guarded(claimed)

    asyncio.run(asyncio.wait_for(run_once(), 120))
    over = store.read.get(job.id)
    events = [(m.routing_key, json.loads(m.body)["data"]) for m in store.read.pending_messages(100)]
    assert [key for key, _ in events] == ["training.accepted", "training.failed"]  # no training.started
    failed = events[-1][1]
    assert (failed["stage"], failed["error_type"], failed["retryable"], failed["attempt"]) == \
        ("data", "DatasetError", False, 1)
    assert over.status is JobStatus.FAILED and over.error["error_type"] == "DatasetError"
    assert "forged" in failed["message"]  # the author's text is there, as text of the refusal
