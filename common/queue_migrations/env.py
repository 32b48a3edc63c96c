"""Alembic environment of the shared `queue` schema."""

from common.migrations import run_env
from common.queue import metadata

run_env(metadata)
