"""`jobs list` and `jobs show` read the job store as it is: they never create it and never migrate
it. A command line of another version must not upgrade a production schema, and a mistyped URL must
end in a clear error, not in a new empty store that lists no jobs. Real SQLite files, a real
PostgreSQL 15, and the real command line."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from foundation.exit_codes import EXIT_FAILED
from foundation.settings import Settings
from service import ops_commands
from service.jobs.store import JobStore, NoJobStore
from service.jobs.tables import ALEMBIC_VERSION_TABLE
from tests.support.cli import run_cli
from tests.support.jobs import accept


def settings_for(url: str, tmp_path) -> Settings:
    return Settings(state_dir=tmp_path / "state", job_store_url=url)


def tables_of(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        return sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_jobs_list_and_show_read_a_migrated_store(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    store = JobStore(settings.job_store_url)
    store.migrate()
    job = accept(store)
    store.close()

    assert job.id in ops_commands.list_jobs(settings, None, 10)
    assert ops_commands.show_job(settings, job.id).startswith(f"job {job.id}: queued")


def test_an_empty_postgres_database_is_refused_and_left_untouched(postgres, tmp_path):
    url = postgres.create_database()  # a mistyped database name, or a schema nobody migrated

    for read in (lambda s: ops_commands.list_jobs(s, None, 10), lambda s: ops_commands.show_job(s, "x")):
        with pytest.raises(NoJobStore, match="holds no job store"):
            read(settings_for(url, tmp_path))
    assert tables_of(url) == []  # nothing migrated


def test_a_store_at_another_schema_revision_is_refused_not_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(url)
    store.migrate()
    with store.transaction(write=True) as conn:  # as an older release left it
        conn.execute(sa.text(f"UPDATE {ALEMBIC_VERSION_TABLE} SET version_num = '0000_older'"))
    store.close()

    with pytest.raises(NoJobStore, match="schema revision 0000_older"):
        ops_commands.list_jobs(settings_for(url, tmp_path), None, 10)
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text(f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}")).scalar() == "0000_older"


def test_a_mistyped_sqlite_url_is_a_clear_error_and_creates_nothing(tmp_path):
    typo = tmp_path / "satte" / "jobs.db"

    listed = run_cli(["jobs", "list"], tmp_path / "state", timeout_s=60, HEIMDALL_JOB_STORE_URL=f"sqlite:///{typo}")

    assert listed.returncode == EXIT_FAILED, listed.stderr
    assert f"no job store at {typo}" in listed.stderr and "Traceback" not in listed.stderr
    assert not typo.parent.exists()
