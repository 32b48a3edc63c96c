"""The Depot registry's Python SDK: `Depot` logs in, pushes and pulls versioned packages."""

from __future__ import annotations

__version__ = "0.1.0"

from depot_client.errors import (
    AuthenticationError,
    ConflictError,
    DepotError,
    IntegrityError,
    NotFoundError,
    RejectedError,
    UsageError,
)
from depot_client.sdk import Depot, PullResult, PushResult

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "Depot",
    "DepotError",
    "IntegrityError",
    "NotFoundError",
    "PullResult",
    "PushResult",
    "RejectedError",
    "UsageError",
    "__version__",
]
