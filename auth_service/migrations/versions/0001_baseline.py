"""Baseline of the `auth` schema: the schema itself, with its Alembic version table.

`common.migrations.run_env` creates the schema before the version table is written into it;
this revision anchors the history that the service's tables build on.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
