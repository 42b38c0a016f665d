"""The job store's database: the engine, one transaction at a time, and migrations.

SQLite (one node, embedded) or PostgreSQL (replicas sharing one store). Every failure to reach
the database is translated here, once, into `JobStoreUnavailable`.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from service.jobs.tables import JobStoreUnavailable, utcnow

MIGRATIONS_DIR = Path(__file__).parents[1] / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
_MIGRATE_LOCK_KEY = 0x4845494D44414C4C  # "HEIMDALL": one replica migrates at a time
_WRITE = "heimdall_write"  # execution option: on SQLite, BEGIN IMMEDIATE instead of DEFERRED


def _create_engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":  # a fresh state directory has no folder yet
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A write transaction takes the write lock up front: a DEFERRED one that reads and then
        # writes fails with SQLITE_BUSY, without waiting, when another writer got in between.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


class Database:
    def __init__(self, url: str):
        self.engine = _create_engine(url)
        self.postgres = self.engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    def clock(self, conn: sa.Connection) -> datetime:
        """The database's own time: the one clock that every replica sharing the store agrees on.
        An embedded SQLite store runs on this machine, so its clock is this machine's."""
        if not self.postgres:
            return utcnow()
        return conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one().astimezone(timezone.utc)

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[sa.Connection]:
        """One transaction; raises JobStoreUnavailable when the database cannot be reached."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{_WRITE: write})
                with conn.begin():
                    yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise JobStoreUnavailable(f"job store unavailable: {exc.orig}") from exc

    def migrate(self) -> None:
        """Alembic `upgrade head`; safe when several replicas start at once. Raises JobStoreUnavailable."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        url = self.engine.url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolates %
        with self._sqlite_file_lock(), self.transaction(write=True) as conn:
            if self.postgres:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK_KEY)))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @contextmanager
    def _sqlite_file_lock(self):
        """SQLite: several processes opening a new database at once race on switching it to WAL
        (which fails at once with "database is locked", busy timeout or not); a lock file
        next to the database serialises their migrations."""
        database = None if self.postgres else self.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
