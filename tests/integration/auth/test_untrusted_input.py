"""Whatever a client puts in a cursor or a path, auth_service answers `400` or `404`, never `500`."""

from __future__ import annotations

import base64
import json
import os

import pytest

from tests.integration.auth.conftest import Api

ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_of(value: object) -> str:
    return b64(json.dumps(value).encode())


# Cursors that none of the three lists can read: users and groups take `[name]`, API tokens take
# `[created_at, id]`.
GARBAGE_CURSORS = {
    "not base64": "!!!",
    "empty": "",
    "padding only": "====",
    "random bytes": b64(os.urandom(48)),
    "not json": b64(b'["x"'),
    "two texts, not a time and an id": cursor_of(["x", "y"]),
    "three texts": cursor_of(["a", "b", "c"]),
    "empty list": cursor_of([]),
    "numbers": cursor_of([1, 2]),
    "a huge number": b64(b"[" + b"9" * 300 + b"]"),
    "an infinite number": b64(b"[1e999, 1e999]"),
    "NaN": b64(b"[NaN]"),
    "nested lists": cursor_of([["a"], ["b"]]),
    "deep nesting": b64(b"[" * 150 + b"]" * 150),
    "an object": cursor_of({"name": "x"}),
    "a string": cursor_of("x"),
    "null": cursor_of(None),
    "NUL": cursor_of(["a\u0000b"]),
    "a lone surrogate": b64(b'["\\ud800"]'),
    "bytes that are not UTF-8": b64(b'["\xff\xfe"]'),
    "a time without a zone": cursor_of(["2026-01-01T00:00:00", ZERO_UUID]),
    "a time before year 1 in UTC": cursor_of(["0001-01-01T00:00:00+23:59", ZERO_UUID]),
    "a time after year 9999 in UTC": cursor_of(["9999-12-31T23:59:59-23:59", ZERO_UUID]),
    "a time and not an id": cursor_of(["2026-01-01T00:00:00+00:00", "not-a-uuid"]),
    "too long": cursor_of(["x" * 600]),
}


@pytest.mark.parametrize("path", ["/auth/users", "/auth/groups", "/auth/api-tokens"])
async def test_a_forged_cursor_is_a_400_on_every_list(api: Api, path: str) -> None:
    admin = await api.admin()
    failures = {}
    for what, cursor in GARBAGE_CURSORS.items():
        response = await api.client.get(path, params={"cursor": cursor}, headers=admin)
        if response.status_code != 400:
            failures[what] = response.status_code
    assert failures == {}


async def test_the_cursors_the_lists_give_still_work(api: Api) -> None:
    admin = await api.admin()
    for index in range(3):
        await api.client.post("/auth/api-tokens", json={"name": f"t{index}"}, headers=admin)
        await api.client.post("/auth/groups", json={"name": f"g{index}"}, headers=admin)
    for path in ("/auth/users", "/auth/groups", "/auth/api-tokens"):
        seen, cursor = 0, None
        while True:
            params = {"limit": 1} | ({"cursor": cursor} if cursor else {})
            page = (await api.client.get(path, params=params, headers=admin)).json()
            seen += len(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == (1 if path == "/auth/users" else 3)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/auth/api-tokens/not-a-uuid"),
        ("DELETE", "/auth/api-tokens/%00"),
        ("DELETE", "/auth/api-tokens/" + "9" * 1000),
        ("DELETE", "/auth/api-tokens/{00000000-0000-0000-0000-000000000000}"),
        ("GET", "/auth/users/%ED%A0%80"),
        ("GET", "/auth/users/%FF%FE"),
        ("GET", "/auth/users/" + "a" * 5000),
        ("GET", "/auth/users/%00x"),
        ("PATCH", "/auth/users/%00x"),
        ("DELETE", "/auth/users/%00x"),
        ("PUT", "/auth/groups/%00/members/root-admin"),
        ("DELETE", "/auth/groups/%00/members/root-admin"),
        ("DELETE", "/auth/groups/%00"),
        ("PUT", "/auth/groups/%ED%A0%80/members/%FF"),
    ],
)
async def test_path_values_that_name_nothing_are_400_or_404(api: Api, method: str, path: str) -> None:
    admin = await api.admin()
    body = {"email": "a@b.c"} if method == "PATCH" else None
    response = await api.client.request(method, path, json=body, headers=admin)
    assert response.status_code in (400, 404), response.text
