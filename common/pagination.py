"""Keyset pagination: opaque cursors, and `limit + 1` rows to know whether there is more (no COUNT)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import Field

from common.api import QueryModel
from common.errors import BadRequest

T = TypeVar("T")


class PageQuery(QueryModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: Annotated[str, Field(max_length=512)] | None = None


def encode_cursor(position: Sequence[Any]) -> str:
    """An opaque cursor for the position after the last item of a page."""
    return base64.urlsafe_b64encode(json.dumps(list(position), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, length: int) -> list[Any] | None:
    """The position a cursor stands for; a malformed cursor is a `400`."""
    if cursor is None:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("The cursor is not valid.") from None
    if not isinstance(position, list) or len(position) != length or not all(isinstance(v, str) for v in position):
        raise BadRequest("The cursor is not valid.")
    return position


def page(rows: Sequence[T], limit: int, position: Callable[[T], Sequence[Any]]) -> tuple[list[T], str | None]:
    """Split `limit + 1` fetched rows into the page and the cursor of the next one."""
    items = list(rows[:limit])
    more = len(rows) > limit
    return items, encode_cursor(position(items[-1])) if more and items else None
