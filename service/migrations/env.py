"""Alembic environment for the job store.

`JobStore.migrate()` passes its own connection, already inside a transaction and holding the
migration lock, in `config.attributes["connection"]`. Without one (the `alembic` CLI) it
connects to `sqlalchemy.url`.
"""

from alembic import context
import sqlalchemy as sa

from service.jobs.tables import ALEMBIC_VERSION_TABLE, metadata


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # Its own version table: the store may share a database with MLflow, which also uses Alembic.
        version_table=ALEMBIC_VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        run_migrations(connection)


if context.is_offline_mode():
    raise SystemExit("the job store's migrations run online only (JobStore.migrate())")
run_migrations_online()
