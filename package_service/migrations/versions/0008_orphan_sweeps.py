"""An orphan whose bytes the janitor is deleting is marked, so that no row lock is held while S3 answers.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "packages"


def upgrade() -> None:
    op.add_column("orphans", sa.Column("sweep_started_at", sa.DateTime(timezone=True)), schema=S)


def downgrade() -> None:
    op.drop_column("orphans", "sweep_started_at", schema=S)
