"""Tables of the `auth` schema."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, UUID

metadata = sa.MetaData(schema="auth")

_now = sa.func.now()


def _uuid_pk() -> sa.Column[Any]:
    return sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()"))


users = sa.Table(
    "users",
    metadata,
    _uuid_pk(),
    sa.Column("username", sa.Text, nullable=False, unique=True),  # stored lowercase
    sa.Column("email", sa.Text),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("roles", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint("username = lower(username)", name="users_username_lowercase"),
    sa.CheckConstraint("roles <@ ARRAY['admin', 'service']::text[]", name="users_known_roles"),
)

# Every username ever given to an account, kept when the account is deleted: a name is never
# given to another account (API.md section 2).
spent_usernames = sa.Table(
    "spent_usernames",
    metadata,
    sa.Column("username", sa.Text, primary_key=True),  # lowercase, like users.username
    sa.Column("spent_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint("username = lower(username)", name="spent_usernames_lowercase"),
)

groups = sa.Table(
    "groups",
    metadata,
    _uuid_pk(),
    sa.Column("name", sa.Text, nullable=False, unique=True),  # case kept and significant
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)

group_members = sa.Table(
    "group_members",
    metadata,
    sa.Column("group_id", UUID(as_uuid=True), sa.ForeignKey("auth.groups.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("auth.users.id", ondelete="CASCADE"), primary_key=True),
    sa.Index("group_members_user", "user_id"),
)

# One row per refresh token; `login_id` groups the tokens of one login (a rotation chain).
refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    _uuid_pk(),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("auth.users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("login_id", UUID(as_uuid=True), nullable=False),
    sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("spent_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Index("refresh_tokens_login", "login_id"),
    sa.Index("refresh_tokens_user", "user_id"),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    _uuid_pk(),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("auth.users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Index("api_tokens_user", "user_id"),
)

# Login attempts in a row per username (known or not) that did not succeed: failed, or still being
# checked (an attempt is counted before its password is checked; see `service.login`). Shared by
# every task of the service.
login_failures = sa.Table(
    "login_failures",
    metadata,
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("blocked_until", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)
