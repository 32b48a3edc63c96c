"""A presigned upload being completed is claimed, so that no row lock is held while S3 answers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "packages"


def upgrade() -> None:
    op.add_column("uploads", sa.Column("claimed_at", sa.DateTime(timezone=True)), schema=S)


def downgrade() -> None:
    op.drop_column("uploads", "claimed_at", schema=S)
