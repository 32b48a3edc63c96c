"""The job queue: the `queue.jobs` table and its partial indexes.

`common.migrations.run_env` creates the schema itself. This must agree with `common.queue.jobs`
(the integration tests compare the two).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('queued', 'running', 'done', 'dead')", name="jobs_status_check"),
        schema="queue",
    )
    # At most one active job per key: enqueuing it again meanwhile is a no-op (ON CONFLICT DO NOTHING).
    op.create_index(
        "jobs_active_key",
        "jobs",
        ["queue", "key"],
        unique=True,
        schema="queue",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        "jobs_claimable",
        "jobs",
        ["queue", "run_at"],
        schema="queue",
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "jobs_leased",
        "jobs",
        ["queue", "lease_expires_at"],
        schema="queue",
        postgresql_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    op.drop_index("jobs_leased", table_name="jobs", schema="queue")
    op.drop_index("jobs_claimable", table_name="jobs", schema="queue")
    op.drop_index("jobs_active_key", table_name="jobs", schema="queue")
    op.drop_table("jobs", schema="queue")
