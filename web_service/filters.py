"""Template filters: sizes, times and JSON as people read them (their output is still escaped)."""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

from jinja2 import Environment

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def filesize(value: Any) -> str:
    """`1536` → `1.5 KiB`."""
    if not isinstance(value, int | float):
        return "—"
    return _size_text(value)


@functools.lru_cache(maxsize=4096)
def _size_text(value: float) -> str:
    # Like times, the same sizes come back on every load of a page: worked out once.
    size = float(value)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def when(value: Any) -> str:
    """An RFC 3339 time as `2026-11-23 10:00 UTC`."""
    if not isinstance(value, str):
        return "—"
    return _when_text(value)


@functools.lru_cache(maxsize=4096)
def _when_text(value: str) -> str:
    # The same few times come back on every load of a page (a package's versions): parsed once.
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def pretty_json(value: Any) -> str:
    """Indented JSON text (escaped by the template like any other text)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def install(environment: Environment) -> None:
    environment.filters.update(filesize=filesize, when=when, pretty_json=pretty_json)
