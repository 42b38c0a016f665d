"""Jobs, processed events (dedupe by event id) and the transactional outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Spelled out rather than imported from service.jobs.tables: a migration is a frozen record of
# the schema at its revision, and must not change when the tables module does.
STATUSES = "'queued', 'running', 'succeeded', 'failed', 'cancelled'"
LIVE_STATUSES = "'queued', 'running', 'succeeded'"  # the states that hold an idempotency key


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("idempotency_key", sa.String(512), nullable=False),
        sa.Column("dataset_id", sa.String(255), nullable=False),
        sa.Column("dataset_version", sa.Integer, nullable=False),
        sa.Column("dataset_uri", sa.Text, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("config_hash", sa.String(128), nullable=False),
        sa.Column("trigger_id", sa.String(255), nullable=False),
        sa.Column("trigger_kind", sa.String(16), nullable=False),
        sa.Column("export_only", sa.Boolean, nullable=False),
        sa.Column("checkpoint_uri", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("cancel_reason", sa.Text, nullable=True),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", _utc(), nullable=True),
        sa.Column("not_before", _utc(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.CheckConstraint(f"status IN ({STATUSES})", name="ck_jobs_status"),
        sa.CheckConstraint("trigger_kind IN ('auto', 'manual')", name="ck_jobs_trigger_kind"),
    )
    live = sa.text(f"status IN ({LIVE_STATUSES})")
    op.create_index("uq_jobs_idempotency_key_live", "jobs", ["idempotency_key"], unique=True,
                    postgresql_where=live, sqlite_where=live)
    op.create_index("ix_jobs_status_not_before", "jobs", ["status", "not_before"])
    op.create_index("ix_jobs_dataset", "jobs", ["dataset_id", "trigger_kind", "dataset_version"])

    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("received_at", _utc(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
    )

    op.create_table(
        "outbox",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("published_at", _utc(), nullable=True),
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("processed_events")
    op.drop_table("jobs")
