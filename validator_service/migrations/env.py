"""Alembic environment of the `validation` schema."""

from common.migrations import run_env
from validator_service.models import metadata

run_env(metadata)
