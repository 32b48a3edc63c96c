"""The request id of the request being served, for logs and for calls to other services."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

REQUEST_ID_HEADER = "X-Request-ID"
_VALID = re.compile(r"[A-Za-z0-9._-]{1,128}")

current_request_id: ContextVar[str | None] = ContextVar("depot_request_id", default=None)


def accept_or_generate(incoming: str | None) -> str:
    """Keep a caller's id when it is well formed (API.md section 1), else make a new one."""
    if incoming is not None and _VALID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex
