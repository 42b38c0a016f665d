"""Alembic migrations of the job store; `JobStore.migrate()` runs them (there is no alembic.ini)."""
