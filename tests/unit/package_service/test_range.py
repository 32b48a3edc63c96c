"""`parse_range`: which bytes a `Range` header selects (RFC 9110, 14.1), with inclusive bounds."""

from __future__ import annotations

import pytest

from common.errors import RangeNotSatisfiable
from package_service.storage import parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        (None, 0, None),
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=0-9", 10, (0, 9)),
        ("bytes=2-5", 10, (2, 5)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=0-", 10, (0, 9)),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=9-", 10, (9, 9)),
        ("bytes=3-1000", 10, (3, 9)),  # the end is clamped to the body
        ("bytes=-1", 10, (9, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-10", 10, (0, 9)),
        ("bytes=-1000", 10, (0, 9)),  # a suffix longer than the body is the whole body
        ("bytes=0-0", 1, (0, 0)),
        ("bytes=-1", 1, (0, 0)),
        ("BYTES=1-2", 10, (1, 2)),  # the unit is case-insensitive
        ("  bytes=1-2  ", 10, (1, 2)),
        ("bytes=007-008", 10, (7, 8)),
        (f"bytes=0-{10**30}", 10, (0, 9)),
        ("bytes=0-" + "9" * 4301, 10, (0, 9)),  # more digits than Python converts
        ("bytes=-" + "9" * 4301, 10, (0, 9)),
        ("bytes=" + "0" * 5000 + "1-" + "0" * 5000 + "2", 10, (1, 2)),
    ],
)
def test_satisfiable_and_absent_ranges(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=abc",
        "bytes=1",
        "bytes=1-2-3",
        "bytes=a-2",
        "bytes=1-b",
        "bytes=+1-2",
        "bytes=-+1",
        "bytes=1.5-2",
        "bytes=²-3",  # a non-ASCII digit
        "bytes=5-2",  # last before first: invalid, hence ignored
        "bytes=0-1,3-4",  # several ranges: served whole
        "bytes=0-1, 3-4",
        "bytes=0-0,",
        "items=0-1",
        "bytes 0-1",
        "=0-1",
        "bytes=1 - 2",
        "bytes=" + "9" * 4301 + "-1",  # last before first, however long
        "bytes=-1-2",
        "bytes=\u0661-\u0662",
    ],
)
def test_malformed_or_multiple_ranges_are_ignored(header: str) -> None:
    assert parse_range(header, 10) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=10-20", 10),
        ("bytes=11-11", 10),
        ("bytes=-0", 10),  # the last zero bytes
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
        ("bytes=-1", 0),
        (f"bytes={10**30}-", 10),
        ("bytes=" + "9" * 4301 + "-", 10),
        ("bytes=" + "9" * 4301 + "-" + "9" * 4302, 10),
        ("bytes=-" + "0" * 5000, 10),
    ],
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        parse_range(header, size)
    assert raised.value.status == 416
    assert raised.value.headers == {"Content-Range": f"bytes */{size}"}
