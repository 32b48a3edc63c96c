"""Alembic environment of the `auth` schema."""

from auth_service.models import metadata
from common.migrations import run_env

run_env(metadata)
