"""Number each validation of a version, so that verdicts can be ordered.

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


def upgrade() -> None:
    # Reports written before this are run 0: the next validation of any of them is newer.
    op.add_column(
        "reports", sa.Column("run", sa.Integer, nullable=False, server_default=sa.text("0")), schema="validation"
    )


def downgrade() -> None:
    op.drop_column("reports", "run", schema="validation")
