"""`jobs list` / `jobs show` print what others wrote (a dataset's refusal, a cancel's reason) as text:
a newline cannot add a line and a terminal escape is shown, not acted on."""

from __future__ import annotations

from foundation.child_protocol import Failure
from foundation.settings import Settings
from service.jobs.events import failed_message
from service.jobs.store import JobStore
from tests.support.cli import run_cli
from tests.support.jobs import accept

HOSTILE = "dataset d: shards/0\nfailed       attempt 9, register: Forged\x1b[2J\x1b]0;owned\x07"


def test_a_failure_message_with_newlines_and_escapes_stays_one_printable_line(tmp_path, clean_env):
    settings = Settings(state_dir=tmp_path)
    store = JobStore(settings.job_store_url)
    store.migrate()
    accept(store)
    job = store.claim_next("w", 30.0)
    failure = Failure(stage="data", error_type="DatasetError", message=HOSTILE, retryable=False)
    store.finish_failed(job.id, "w", failure.model_dump(), [failed_message(job, failure, retryable=False)])
    store.close()
    for args in (["jobs", "show", job.id], ["jobs", "list"]):
        done = run_cli(args, tmp_path)
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout and "\x07" not in done.stdout
        assert not [line for line in done.stdout.splitlines() if line.startswith("failed       attempt 9")]
