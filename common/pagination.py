"""Keyset pagination: opaque cursors, and `limit + 1` rows to know whether there is more (no COUNT)."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import Field

from common.api import QueryModel
from common.errors import BadRequest

T = TypeVar("T")


class PageQuery(QueryModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: Annotated[str, Field(max_length=512)] | None = None


CursorField = Callable[[str], Any]
"""How one value of a cursor is read back from its text (`text`, `aware_datetime`, `uuid.UUID`,
`bytes.fromhex`): a `ValueError` (or `TypeError`) means the cursor is not valid."""


def encode_cursor(position: Sequence[str | datetime | uuid.UUID | bytes]) -> str:
    """An opaque cursor for the position after the last item of a page (each value as text)."""
    texts = [_text(value) for value in position]
    return base64.urlsafe_b64encode(json.dumps(texts, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, *fields: CursorField) -> tuple[Any, ...] | None:
    """The position a cursor stands for, each value read by its field; anything else is a `400`.

    Cursors come back from clients, who may send anything: this is the one place they are read.
    """
    if cursor is None:
        return None
    try:
        texts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(texts, list) or len(texts) != len(fields) or not all(isinstance(t, str) for t in texts):
            raise ValueError("not a list of texts of the right length")  # noqa: TRY301 - one answer for every fault
        return tuple(field(text) for field, text in zip(fields, texts, strict=True))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError, OverflowError):
        raise BadRequest("The cursor is not valid.") from None


def text(value: str) -> str:
    """A cursor value that is text the database can compare: no NUL, valid Unicode."""
    if "\x00" in value:
        raise ValueError("NUL in a cursor")
    value.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, a ValueError
    return value


def aware_datetime(value: str) -> datetime:
    """A cursor value that is a point in time, with its time zone, in UTC.

    Converting it proves that it can be: a time whose offset carries it past year 1 or 9999
    (`0001-01-01T00:00:00+23:59`) is an `OverflowError` here, not in the database driver.
    """
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("a time without a time zone")
    return parsed.astimezone(UTC)


def _text(value: str | datetime | uuid.UUID | bytes) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def page(rows: Sequence[T], limit: int, position: Callable[[T], Sequence[Any]]) -> tuple[list[T], str | None]:
    """Split `limit + 1` fetched rows into the page and the cursor of the next one."""
    items = list(rows[:limit])
    more = len(rows) > limit
    return items, encode_cursor(position(items[-1])) if more and items else None
