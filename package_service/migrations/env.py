"""Alembic environment of the `packages` schema."""

from common.migrations import run_env
from package_service.models import metadata

run_env(metadata)
