"""Users, groups, memberships, refresh and API tokens, login failures.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "auth"


def _id() -> sa.Column[Any]:
    return sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()"))


def _at(name: str, nullable: bool = False) -> sa.Column[Any]:
    default = None if nullable else sa.func.now()
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def _owner() -> sa.Column[Any]:
    return sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey(f"{S}.users.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "users",
        _id(),
        sa.Column("username", sa.Text, nullable=False, unique=True),
        sa.Column("email", sa.Text),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("roles", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        _at("created_at"),
        _at("updated_at"),
        sa.CheckConstraint("username = lower(username)", name="users_username_lowercase"),
        sa.CheckConstraint("roles <@ ARRAY['admin', 'service']::text[]", name="users_known_roles"),
        schema=S,
    )
    op.create_table(
        "groups",
        _id(),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        _at("created_at"),
        schema=S,
    )
    op.create_table(
        "group_members",
        sa.Column(
            "group_id", UUID(as_uuid=True), sa.ForeignKey(f"{S}.groups.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey(f"{S}.users.id", ondelete="CASCADE"), primary_key=True),
        schema=S,
    )
    op.create_index("group_members_user", "group_members", ["user_id"], schema=S)
    op.create_table(
        "refresh_tokens",
        _id(),
        _owner(),
        sa.Column("login_id", UUID(as_uuid=True), nullable=False),
        sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _at("spent_at", nullable=True),
        _at("revoked_at", nullable=True),
        _at("created_at"),
        schema=S,
    )
    op.create_index("refresh_tokens_login", "refresh_tokens", ["login_id"], schema=S)
    op.create_index("refresh_tokens_user", "refresh_tokens", ["user_id"], schema=S)
    op.create_table(
        "api_tokens",
        _id(),
        _owner(),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _at("last_used_at", nullable=True),
        _at("revoked_at", nullable=True),
        _at("created_at"),
        schema=S,
    )
    op.create_index("api_tokens_user", "api_tokens", ["user_id"], schema=S)
    op.create_table(
        "login_failures",
        sa.Column("username", sa.Text, primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        _at("blocked_until", nullable=True),
        _at("updated_at"),
        schema=S,
    )


def downgrade() -> None:
    for table in ("login_failures", "api_tokens", "refresh_tokens", "group_members", "groups", "users"):
        op.drop_table(table, schema=S)
