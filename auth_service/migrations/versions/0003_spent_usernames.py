"""Spent usernames: every username ever given to an account, kept after the account is deleted.

A deleted user's name is never given to another account (API.md section 2): packages, tokens,
audit lines and group grants name users, and a newcomer under an old name would inherit them.
The names of the accounts that exist now are spent already.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "auth"


def upgrade() -> None:
    op.create_table(
        "spent_usernames",
        sa.Column("username", sa.Text, primary_key=True),
        sa.Column("spent_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("username = lower(username)", name="spent_usernames_lowercase"),
        schema=S,
    )
    op.execute("INSERT INTO auth.spent_usernames (username, spent_at) SELECT username, created_at FROM auth.users")


def downgrade() -> None:
    op.drop_table("spent_usernames", schema=S)
