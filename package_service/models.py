"""Tables of the `packages` schema."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

metadata = sa.MetaData(schema="packages")

_now = sa.func.now()


def _id() -> sa.Column[Any]:
    return sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()"))


def _at(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=None if nullable else _now)


packages = sa.Table(
    "packages",
    metadata,
    _id(),
    sa.Column("name", sa.Text, nullable=False),  # as first created
    sa.Column("normalized_name", sa.Text, nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("visibility", sa.Text, nullable=False, server_default="private"),
    sa.Column("owner", sa.Text, nullable=False),  # username (immutable in auth_service)
    sa.Column("read_groups", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
    sa.Column("write_groups", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
    sa.Column("download_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    _at("created_at"),
    _at("updated_at"),
    sa.CheckConstraint("visibility IN ('private', 'public')", name="packages_visibility"),
    sa.Index("packages_owner", "owner"),
    # `q` searches names in any spelling (the normalized name) and descriptions.
    sa.Index(
        "packages_normalized_name_trgm",
        "normalized_name",
        postgresql_using="gin",
        postgresql_ops={"normalized_name": "gin_trgm_ops"},
    ),
    sa.Index("packages_description_trgm", sa.text("lower(description) gin_trgm_ops"), postgresql_using="gin"),
)

versions = sa.Table(
    "versions",
    metadata,
    _id(),
    sa.Column(
        "package_id", UUID(as_uuid=True), sa.ForeignKey("packages.packages.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("version", sa.Text, nullable=False),  # canonical text, build metadata included
    sa.Column("version_key", sa.Text, nullable=False),  # identity: without build metadata
    sa.Column("sort_key", sa.LargeBinary, nullable=False),  # bytewise order == SemVer precedence
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
    sa.Column("validation_run", sa.Integer),  # the run of the verdict applied last: an older one never overwrites it
    sa.Column("download_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    _at("created_at"),
    _at("validated_at", nullable=True),
    sa.CheckConstraint("status IN ('pending', 'available', 'rejected', 'yanked')", name="versions_status"),
    sa.UniqueConstraint("package_id", "version_key", name="versions_identity"),
    sa.Index("versions_precedence", "package_id", "sort_key"),
    # For the sweep that re-queues versions left pending too long.
    sa.Index("versions_pending", "created_at", postgresql_where=sa.text("status = 'pending'")),
)

# Every version string ever used, by normalized package name: never accepted again, even after
# the version or the whole package was deleted.
spent_versions = sa.Table(
    "spent_versions",
    metadata,
    sa.Column("normalized_name", sa.Text, primary_key=True),
    sa.Column("version_key", sa.Text, primary_key=True),
    _at("spent_at"),
)

# The names of deleted packages (by normalized name), reserved for their last owner (and admins):
# nobody else may publish under a name that others already depend on.
reserved_names = sa.Table(
    "reserved_names",
    metadata,
    sa.Column("normalized_name", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),  # as the deleted package spelled it
    sa.Column("last_owner", sa.Text, nullable=False),
    _at("reserved_at"),
)

# Presigned multipart uploads in progress (one open per version).
uploads = sa.Table(
    "uploads",
    metadata,
    _id(),
    sa.Column(
        "package_id", UUID(as_uuid=True), sa.ForeignKey("packages.packages.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("version_key", sa.Text, nullable=False),
    sa.Column("s3_key", sa.Text, nullable=False),
    sa.Column("s3_upload_id", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.Text),  # lower-case hex; NULL until declared (at the start or at completion)
    sa.Column("part_size", sa.BigInteger, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("filename", sa.Text),
    sa.Column("created_by", sa.Text, nullable=False),
    _at("created_at"),
    _at("expires_at", nullable=True),
    # Set while a request completes the upload (its S3 calls run with no lock held): see presigned.py.
    _at("claimed_at", nullable=True),
    sa.Index("uploads_open_version", "package_id", "version_key", unique=True),
    sa.Index("uploads_expiry", "expires_at"),
)

# Who moved which bytes, how, and how it ended.
transfers = sa.Table(
    "transfers",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("package", sa.Text, nullable=False),  # the name as requested: a failed upload may have no package
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
    sa.Index("transfers_version", "version_id", "created_at"),
)

# Every change of a version's status, why and by whom. No foreign keys: the history outlives
# the versions and packages it speaks of.
version_events = sa.Table(
    "version_events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("package_id", UUID(as_uuid=True), nullable=False),
    sa.Column("version_id", UUID(as_uuid=True), nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("from_status", sa.Text, nullable=False),
    sa.Column("to_status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),  # a username, or "validator" for verdicts
    _at("created_at"),
    sa.Index("version_events_package", "package_id", "created_at"),
)

# Bytes whose row is gone but whose deletion from S3 failed: swept later.
orphans = sa.Table(
    "orphans",
    metadata,
    sa.Column("s3_key", sa.Text, primary_key=True),
    _at("created_at"),
    # Set when the janitor starts deleting the key's bytes: from then on no version may take the key over.
    _at("sweep_started_at", nullable=True),
)
