"""Packages, versions, spent version strings, presigned uploads, transfers, orphaned bytes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "packages"


def _id() -> sa.Column[Any]:
    return sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()"))


def _at(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable, server_default=None if nullable else sa.func.now()
    )


def _package() -> sa.Column[Any]:
    return sa.Column(
        "package_id", UUID(as_uuid=True), sa.ForeignKey(f"{S}.packages.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    # Trusted extension: the database owner may create it (no superuser needed, on RDS either).
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_table(
        "packages",
        _id(),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("normalized_name", sa.Text, nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("visibility", sa.Text, nullable=False, server_default="private"),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("read_groups", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("write_groups", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("download_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        _at("created_at"),
        _at("updated_at"),
        sa.CheckConstraint("visibility IN ('private', 'public')", name="packages_visibility"),
        schema=S,
    )
    op.create_index("packages_owner", "packages", ["owner"], schema=S)
    op.create_index(
        "packages_name_trgm", "packages", [sa.text("lower(name) gin_trgm_ops")], schema=S, postgresql_using="gin"
    )
    op.create_index(
        "packages_description_trgm",
        "packages",
        [sa.text("lower(description) gin_trgm_ops")],
        schema=S,
        postgresql_using="gin",
    )
    op.create_table(
        "versions",
        _id(),
        _package(),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("version_key", sa.Text, nullable=False),
        sa.Column("sort_key", sa.LargeBinary, nullable=False),
        sa.Column("prerelease", sa.Boolean, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("filename", sa.Text),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("uploaded_by", sa.Text, nullable=False),
        sa.Column("s3_key", sa.Text, nullable=False),
        sa.Column("yank_reason", sa.Text),
        sa.Column("validation", JSONB),
        sa.Column("download_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        _at("created_at"),
        _at("validated_at", nullable=True),
        sa.CheckConstraint("status IN ('pending', 'available', 'rejected', 'yanked')", name="versions_status"),
        sa.UniqueConstraint("package_id", "version_key", name="versions_identity"),
        schema=S,
    )
    op.create_index("versions_precedence", "versions", ["package_id", "sort_key"], schema=S)
    op.create_table(
        "spent_versions",
        sa.Column("normalized_name", sa.Text, primary_key=True),
        sa.Column("version_key", sa.Text, primary_key=True),
        _at("spent_at"),
        schema=S,
    )
    op.create_table(
        "uploads",
        _id(),
        _package(),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("version_key", sa.Text, nullable=False),
        sa.Column("s3_key", sa.Text, nullable=False),
        sa.Column("s3_upload_id", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("part_size", sa.BigInteger, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("filename", sa.Text),
        sa.Column("created_by", sa.Text, nullable=False),
        _at("created_at"),
        _at("expires_at", nullable=True),
        schema=S,
    )
    op.create_index("uploads_open_version", "uploads", ["package_id", "version_key"], unique=True, schema=S)
    op.create_index("uploads_expiry", "uploads", ["expires_at"], schema=S)
    op.create_table(
        "transfers",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("package", sa.Text, nullable=False),
        sa.Column("package_id", UUID(as_uuid=True)),
        sa.Column("version_id", UUID(as_uuid=True)),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        _at("created_at"),
        sa.CheckConstraint("direction IN ('upload', 'download')", name="transfers_direction"),
        schema=S,
    )
    op.create_index("transfers_version", "transfers", ["version_id", "created_at"], schema=S)
    op.create_table("orphans", sa.Column("s3_key", sa.Text, primary_key=True), _at("created_at"), schema=S)


def downgrade() -> None:
    for table in ("orphans", "transfers", "uploads", "spent_versions", "versions", "packages"):
        op.drop_table(table, schema=S)
