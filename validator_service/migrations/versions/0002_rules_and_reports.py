"""Admission rules and validation reports.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rules",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("max_artifact_bytes", sa.BigInteger, nullable=False),
        sa.Column("max_unpacked_bytes", sa.BigInteger, nullable=False),
        sa.Column("max_entries", sa.Integer, nullable=False),
        sa.Column("max_compression_ratio", sa.Float, nullable=False),
        sa.Column("pickle_policy", sa.Text, nullable=False),
        sa.Column("allowed_licenses", JSONB, nullable=False),
        sa.Column("updated_by", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("id = 1", name="rules_single_row"),
        sa.CheckConstraint("pickle_policy IN ('reject', 'warn', 'allow')", name="rules_pickle_policy"),
        schema="validation",
    )
    op.create_table(
        "reports",
        sa.Column("version_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("package", sa.Text, nullable=False),
        sa.Column("normalized_name", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("version_key", sa.Text, nullable=False),
        sa.Column("s3_key", sa.Text, nullable=False),
        sa.Column("filename", sa.Text),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("checks", JSONB, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN ('queued', 'running', 'passed', 'failed', 'error')", name="reports_status"),
        schema="validation",
    )
    op.create_index("reports_by_name", "reports", ["normalized_name", "version_key"], schema="validation")


def downgrade() -> None:
    op.drop_table("reports", schema="validation")
    op.drop_table("rules", schema="validation")
