"""A presigned upload's sha256 may be declared when it completes: NULL until then.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "packages"


def upgrade() -> None:
    op.alter_column("uploads", "sha256", existing_type=sa.Text, nullable=True, schema=S)


def downgrade() -> None:
    # Uploads that declared no sha256 cannot be kept: their rows go, their keys stay in `orphans`
    # (written when they started), so the janitor sweeps their bytes and aborts their multipart uploads.
    op.execute("DELETE FROM packages.uploads WHERE sha256 IS NULL")
    op.alter_column("uploads", "sha256", existing_type=sa.Text, nullable=False, schema=S)
