"""Names of deleted packages stay reserved for their last owner; names are searched in any spelling.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "packages"


def upgrade() -> None:
    op.create_table(
        "reserved_names",
        sa.Column("normalized_name", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("last_owner", sa.Text, nullable=False),
        sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    # `q` matches the normalized name now, never lower(name): the old index would only slow writes.
    op.drop_index("packages_name_trgm", table_name="packages", schema=S)
    op.create_index(
        "packages_normalized_name_trgm",
        "packages",
        ["normalized_name"],
        schema=S,
        postgresql_using="gin",
        postgresql_ops={"normalized_name": "gin_trgm_ops"},
    )


def downgrade() -> None:
    op.drop_index("packages_normalized_name_trgm", table_name="packages", schema=S)
    op.create_index(
        "packages_name_trgm", "packages", [sa.text("lower(name) gin_trgm_ops")], schema=S, postgresql_using="gin"
    )
    op.drop_table("reserved_names", schema=S)
