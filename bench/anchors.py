"""Bare endpoints that the read benchmark measures the services against (`bench/read_bench.py`).

One Starlette app on asyncpg, nothing else: no SQLAlchemy, no middleware, no logging, no metrics.
Each endpoint answers one of the services' reads with the same facts (the same JSON fields, the
same access rule and the same `404`/`401`) in one SQL query, after checking the caller's access
token with PyJWT (EdDSA, the same claims checked: `iss`, `aud`, `exp` and the required claims).
`/bare/packages/{name}` is `GET /packages/{name}` without the token check (public packages only).

`uvicorn --factory bench.anchors:create_app`, with `BENCH_ANCHOR_DSN` (an asyncpg DSN of the
services' database) and `BENCH_ANCHOR_PUBLIC_KEY` (the PEM key that verifies the tokens).
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ISSUER = "depot"
AUDIENCE = "depot"
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]
POOL_SIZE = 10  # the services' pool: 10 connections and 5 more in overflow
POOL_OVERFLOW = 5
PAGE = 20

_SEPARATORS = re.compile(r"[-_.]+")

PACKAGE_COLUMNS = """
    p.name, p.normalized_name, p.description, p.visibility, p.owner, p.read_groups, p.write_groups,
    p.download_count, p.created_at, p.updated_at,
    (SELECT v.version FROM packages.versions v
      WHERE v.package_id = p.id AND v.status = 'available' AND NOT v.prerelease
      ORDER BY v.sort_key DESC LIMIT 1) AS latest_version,
    (SELECT count(*) FROM packages.versions v WHERE v.package_id = p.id) AS version_count
"""
PACKAGE = f"SELECT {PACKAGE_COLUMNS} FROM packages.packages p WHERE p.normalized_name = $1"  # noqa: S608 - constants
VERSION = """
SELECT p.name AS package, p.visibility, p.owner, p.read_groups, p.write_groups, v.version, v.status, v.size,
       v.sha256, v.content_type, v.filename, v.description, v.metadata, v.uploaded_by, v.created_at,
       v.validated_at, v.yank_reason, v.download_count, v.validation
  FROM packages.packages p LEFT JOIN packages.versions v ON v.package_id = p.id AND v.version_key = $2
 WHERE p.normalized_name = $1
"""
SEARCH = f"""
SELECT {PACKAGE_COLUMNS} FROM packages.packages p
 WHERE (p.owner = $1 OR p.visibility = 'public' OR p.read_groups && $2::text[] OR p.write_groups && $2::text[])
   AND (p.normalized_name LIKE $3 ESCAPE '\\' OR lower(p.description) LIKE $4 ESCAPE '\\')
 ORDER BY p.normalized_name LIMIT {PAGE + 1}
"""  # noqa: S608 - constants
ME = """
SELECT u.id, u.username, u.email, u.roles, u.disabled, u.created_at,
       ARRAY(SELECT g.name FROM auth.group_members m JOIN auth.groups g ON g.id = m.group_id
              WHERE m.user_id = u.id ORDER BY g.name) AS groups
  FROM auth.users u WHERE u.id = $1
"""

NOT_FOUND = JSONResponse({"status": 404, "detail": "No such package."}, status_code=404)
UNAUTHORIZED = JSONResponse({"status": 401, "detail": "Authentication is required."}, status_code=401)


def _time(value: Any) -> str | None:
    # As pydantic writes them: ISO 8601, UTC as `Z`.
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _normalize(name: str) -> str:
    return _SEPARATORS.sub("-", name).lower()


def _like(text: str) -> str:
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _may_read(claims: dict[str, Any] | None, row: asyncpg.Record) -> bool:
    if row["visibility"] == "public":
        return True
    if claims is None:
        return False
    groups = set(claims.get("groups", []))
    return (
        "admin" in claims.get("roles", [])
        or row["owner"] == claims["name"]
        or bool(groups & {*row["read_groups"], *row["write_groups"]})
    )


def _package(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "name": row["name"],
        "description": row["description"],
        "visibility": row["visibility"],
        "owner": row["owner"],
        "read_groups": sorted(row["read_groups"]),
        "write_groups": sorted(row["write_groups"]),
        "latest_version": row["latest_version"],
        "version_count": row["version_count"],
        "download_count": row["download_count"],
        "created_at": _time(row["created_at"]),
        "updated_at": _time(row["updated_at"]),
    }


async def _jsonb(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class Anchors:
    """The endpoints, on one asyncpg pool; tokens checked with `key`."""

    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        self._key = key
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the anchors are not running")
        return self._pool

    @asynccontextmanager
    async def running(self, dsn: str) -> AsyncIterator[None]:
        self._pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE + POOL_OVERFLOW, init=_jsonb)
        try:
            yield
        finally:
            await self._pool.close()

    def verified(self, request: Request) -> dict[str, Any] | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                header[7:], self._key, algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER, leeway=10,
                options={"require": REQUIRED_CLAIMS},
            )  # fmt: skip
        except jwt.PyJWTError:
            return None
        return claims

    async def _package(self, request: Request, claims: dict[str, Any] | None) -> Response:
        row = await self.pool.fetchrow(PACKAGE, _normalize(request.path_params["name"]))
        if row is None or not _may_read(claims, row):
            return NOT_FOUND
        return JSONResponse(_package(row))

    async def package(self, request: Request) -> Response:
        claims = self.verified(request)
        return UNAUTHORIZED if claims is None else await self._package(request, claims)

    async def package_without_token(self, request: Request) -> Response:
        return await self._package(request, None)

    async def version(self, request: Request) -> Response:
        claims = self.verified(request)
        if claims is None:
            return UNAUTHORIZED
        identity = request.path_params["version"].removeprefix("v").split("+", 1)[0]
        row = await self.pool.fetchrow(VERSION, _normalize(request.path_params["name"]), identity)
        if row is None or not _may_read(claims, row):
            return NOT_FOUND
        if row["version"] is None:
            return JSONResponse({"status": 404, "detail": "No such version."}, status_code=404)
        return JSONResponse(
            {
                "package": row["package"], "version": row["version"], "status": row["status"], "size": row["size"],
                "sha256": row["sha256"], "content_type": row["content_type"], "filename": row["filename"],
                "description": row["description"], "metadata": row["metadata"], "uploaded_by": row["uploaded_by"],
                "created_at": _time(row["created_at"]), "validated_at": _time(row["validated_at"]),
                "yank_reason": row["yank_reason"], "download_count": row["download_count"],
                "validation": row["validation"],
            }
        )  # fmt: skip

    async def search(self, request: Request) -> Response:
        claims = self.verified(request)
        if claims is None:
            return UNAUTHORIZED
        q = request.query_params.get("q", "")
        groups = sorted(claims.get("groups", []))
        rows = await self.pool.fetch(SEARCH, claims["name"], groups, _like(_normalize(q)), _like(q))
        cursor = None
        if len(rows) > PAGE:
            rows = rows[:PAGE]
            position = json.dumps([rows[-1]["normalized_name"]], separators=(",", ":")).encode()
            cursor = base64.urlsafe_b64encode(position).decode().rstrip("=")
        return JSONResponse({"items": [_package(row) for row in rows], "next_cursor": cursor})

    async def me(self, request: Request) -> Response:
        claims = self.verified(request)
        if claims is None:
            return UNAUTHORIZED
        try:
            user_id = uuid.UUID(claims["sub"])
        except ValueError:
            return UNAUTHORIZED
        row = await self.pool.fetchrow(ME, user_id)
        if row is None or row["disabled"] or not set(claims.get("roles", [])) <= set(row["roles"]):
            return UNAUTHORIZED
        return JSONResponse(
            {
                "id": str(row["id"]), "username": row["username"], "email": row["email"],
                "roles": sorted(row["roles"]), "groups": list(row["groups"]), "disabled": row["disabled"],
                "created_at": _time(row["created_at"]),
            }
        )  # fmt: skip


def create_app() -> Starlette:
    """The anchors' app, on the database and key its environment names."""
    key = serialization.load_pem_public_key(os.environ["BENCH_ANCHOR_PUBLIC_KEY"].encode())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise TypeError("the anchors verify EdDSA tokens: BENCH_ANCHOR_PUBLIC_KEY must be an Ed25519 key")
    anchors = Anchors(key)
    dsn = os.environ["BENCH_ANCHOR_DSN"]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with anchors.running(dsn):
            yield

    return Starlette(
        routes=[
            Route("/packages", anchors.search, methods=["GET"]),
            Route("/packages/{name}", anchors.package, methods=["GET"]),
            Route("/packages/{name}/versions/{version}", anchors.version, methods=["GET"]),
            Route("/bare/packages/{name}", anchors.package_without_token, methods=["GET"]),
            Route("/auth/me", anchors.me, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
