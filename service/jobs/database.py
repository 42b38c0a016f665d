"""The job store's database: the engine, one transaction at a time under a deadline, and migrations.

SQLite (one node, embedded) or PostgreSQL (replicas sharing one store). Every failure of the
database is translated here, once: `JobStoreUnavailable` (retryable) when it cannot be reached or
does not answer within `timeout_s`; `NoJobStore` (not retryable) when it answers but holds no job
store at this version's schema (never migrated, or a mistyped URL).

Deadlines on PostgreSQL: the server's own `statement_timeout` ends a statement that waits too long
(a lock held elsewhere, a slow plan) and keeps the connection. A server that accepts connections
and never answers is bounded on this side: psycopg2's wait callback (process-wide; it bounds only
the calls made inside `transaction`) gives each round trip `timeout_s` plus a second, then closes
the connection, which the pool throws away.
"""

from __future__ import annotations

import fcntl
import selectors
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from service.jobs.tables import ALEMBIC_VERSION_TABLE, JobStoreUnavailable, NoJobStore, utcnow

MIGRATIONS_DIR = Path(__file__).parents[1] / "migrations"
DEFAULT_TIMEOUT_S = 10.0
CLIENT_MARGIN_S = 1.0  # the server's statement_timeout, which keeps the connection, gets the first chance
_MIGRATE_LOCK_KEY = 0x4845494D44414C4C  # "HEIMDALL": one replica migrates at a time
_WRITE = "heimdall_write"  # execution option: on SQLite, BEGIN IMMEDIATE instead of DEFERRED
_UNDEFINED_TABLE = "42P01"
_deadline = threading.local()  # timeout_s of the transaction running on this thread, if any


def _wait_with_deadline(conn) -> None:
    """psycopg2's wait callback: where a PostgreSQL call blocks, bounded by this thread's deadline.
    Raising here makes psycopg2 close the connection (the pool then discards it)."""
    import psycopg2
    from psycopg2.extensions import POLL_OK, POLL_READ, POLL_WRITE

    timeout_s = getattr(_deadline, "timeout_s", None)
    ends = None if timeout_s is None else time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        while (state := conn.poll()) != POLL_OK:
            if state not in (POLL_READ, POLL_WRITE):
                raise psycopg2.OperationalError(f"unexpected state from poll: {state}")
            selector.register(conn.fileno(), selectors.EVENT_READ if state == POLL_READ else selectors.EVENT_WRITE)
            remaining = None if ends is None else max(ends - time.monotonic(), 0.0)
            if not selector.select(remaining):
                raise psycopg2.OperationalError(f"the database did not answer within {timeout_s:.0f} s")
            selector.unregister(conn.fileno())


def _postgres_engine(url: sa.URL, timeout_s: float) -> sa.Engine:
    from psycopg2.extensions import set_wait_callback

    set_wait_callback(_wait_with_deadline)
    return sa.create_engine(url, pool_pre_ping=True, pool_timeout=timeout_s,
                            connect_args={"options": f"-c statement_timeout={int(timeout_s * 1000)}"})


def _sqlite_engine(url: sa.URL, timeout_s: float, create: bool) -> sa.Engine:
    if url.database and url.database != ":memory:":
        if create:  # a fresh state directory has no folder yet
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        elif not Path(url.database).is_file():  # sqlite would create it on connect
            raise NoJobStore(f"no job store at {url.database} (nothing was created there): check "
                             f"HEIMDALL_JOB_STORE_URL and HEIMDALL_STATE_DIR")
    engine = sa.create_engine(url, connect_args={"timeout": timeout_s, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        cursor.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A write transaction takes the write lock up front: a DEFERRED one that reads and then
        # writes fails with SQLITE_BUSY, without waiting, when another writer got in between.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


class Database:
    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, create: bool = True):
        """create=False: the store must exist already (a missing SQLite file raises NoJobStore)."""
        parsed = sa.make_url(url)
        self.timeout_s = timeout_s
        self.postgres = parsed.get_backend_name() == "postgresql"
        self.engine = _postgres_engine(parsed, timeout_s) if self.postgres else \
            _sqlite_engine(parsed, timeout_s, create)
        self.where = self.engine.url.render_as_string(hide_password=True)

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
        """One transaction, each round trip bounded by the deadline.
        Raises JobStoreUnavailable (unreachable, busy, no answer in time), NoJobStore (no tables)."""
        outer = getattr(_deadline, "timeout_s", None)
        _deadline.timeout_s = self.timeout_s + CLIENT_MARGIN_S
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{_WRITE: write})
                with conn.begin():
                    yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.ProgrammingError) as exc:
            text = str(exc.orig).strip()
            if getattr(exc.orig, "pgcode", None) == _UNDEFINED_TABLE or text.startswith("no such table"):
                raise NoJobStore(f"{self.where} holds no job store tables ({text.splitlines()[0]}): never "
                                 f"migrated, or the wrong database") from exc
            if isinstance(exc, sa.exc.ProgrammingError):
                raise  # a bug in a query, not the state of the database
            raise JobStoreUnavailable(f"job store unavailable: {text}") from exc
        finally:
            _deadline.timeout_s = outer

    def migrate(self) -> None:
        """Alembic `upgrade head`; safe when several replicas start at once. Raises JobStoreUnavailable."""
        from alembic import command

        config = self._alembic_config()
        with self._sqlite_file_lock(), self.transaction(write=True) as conn:
            if self.postgres:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK_KEY)))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def check_schema(self) -> None:
        """Migrates nothing: raises NoJobStore unless the schema is at this version's head, so that
        a command line of another version never upgrades (or misreads) a production store."""
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        with self.transaction(write=False) as conn:
            found = None
            if sa.inspect(conn).has_table(ALEMBIC_VERSION_TABLE):
                found = conn.execute(sa.text(f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}")).scalar()
        if found is None:
            raise NoJobStore(f"{self.where} holds no job store (never migrated, or a mistyped URL); `serve` "
                             f"creates one")
        if found != head:
            raise NoJobStore(f"the job store at {self.where} is at schema revision {found}, this version reads "
                             f"{head}: use the command line of the version that serves it")

    def _alembic_config(self):
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        url = self.engine.url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolates %
        return config

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
