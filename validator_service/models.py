"""Tables of the `validation` schema."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = sa.MetaData(schema="validation")

_now = sa.func.now()

# The admission rules: one row (id 1) once an admin has set them; the defaults until then.
rules = sa.Table(
    "rules",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True),
    sa.Column("max_artifact_bytes", sa.BigInteger, nullable=False),
    sa.Column("max_unpacked_bytes", sa.BigInteger, nullable=False),
    sa.Column("max_entries", sa.Integer, nullable=False),
    sa.Column("max_compression_ratio", sa.Float, nullable=False),
    sa.Column("pickle_policy", sa.Text, nullable=False),
    sa.Column("allowed_licenses", JSONB, nullable=False),
    sa.Column("updated_by", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint("id = 1", name="rules_single_row"),
    sa.CheckConstraint("pickle_policy IN ('reject', 'warn', 'allow')", name="rules_pickle_policy"),
)

# One report per version (its id, as package_service knows it), rewritten by every validation of it.
reports = sa.Table(
    "reports",
    metadata,
    sa.Column("version_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("package", sa.Text, nullable=False),  # the name as package_service gives it
    sa.Column("normalized_name", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("version_key", sa.Text, nullable=False),  # SemVer identity: what any spelling finds
    sa.Column("s3_key", sa.Text, nullable=False),
    sa.Column("filename", sa.Text),
    sa.Column("sha256", sa.Text, nullable=False),  # declared
    sa.Column("size", sa.BigInteger, nullable=False),  # declared
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("checks", JSONB, nullable=False, server_default=sa.text("'[]'")),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    # Validations started for this version, the current one included; its verdict carries it.
    sa.Column("run", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint("status IN ('queued', 'running', 'passed', 'failed', 'error')", name="reports_status"),
    sa.Index("reports_by_name", "normalized_name", "version_key"),
)
