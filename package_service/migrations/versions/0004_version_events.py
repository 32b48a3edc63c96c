"""Version status history, and the run of the verdict each version applied last.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "packages"


def upgrade() -> None:
    # Versions decided before this keep NULL: any verdict that carries a run is newer.
    op.add_column("versions", sa.Column("validation_run", sa.Integer), schema=S)
    op.create_table(
        "version_events",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("package_id", UUID(as_uuid=True), nullable=False),
        sa.Column("version_id", UUID(as_uuid=True), nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("from_status", sa.Text, nullable=False),
        sa.Column("to_status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("version_events_package", "version_events", ["package_id", "created_at"], schema=S)


def downgrade() -> None:
    op.drop_table("version_events", schema=S)
    op.drop_column("versions", "validation_run", schema=S)
