"""web_service over real HTTP in front of the three services (`open_depot`: real PostgreSQL and S3).

Users sign in with passwords at auth_service through the pages, as in a browser: their tokens
are auth_service's own, so every access rule is the APIs' own. Packages are made through the
APIs by the package tests' owner (olivia), as fixtures.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Servers
from tests.helpers import real_server
from tests.integration.auth.conftest import ADMIN
from tests.integration.validator.conftest import Depot, open_depot, zip_of
from web_service.app import create_app
from web_service.settings import WebSettings

PASSWORD = "correct horse battery"
SESSION_KEY = "k" * 48
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def evil_pickle() -> bytes:
    """A pickle that would run `os.system` when loaded (never loaded: the validator reads opcodes)."""
    return b"cos\nsystem\n(S'echo owned'\ntR."


def good_zip() -> bytes:
    return zip_of({"weights.bin": b"\x00" * 64, "README.md": b"a tiny model"})


def bad_zip() -> bytes:
    return zip_of({"model.pkl": evil_pickle(), "README.md": pickle.dumps("fine")})


def zip_with_names(names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")
    return buffer.getvalue()


@dataclass
class Site:
    depot: Depot
    url: str
    settings: WebSettings

    def browser(self) -> httpx.AsyncClient:
        """A client that keeps cookies, as a browser does, and does not follow redirects."""
        return httpx.AsyncClient(base_url=self.url, timeout=60, follow_redirects=False)

    async def sign_in(self, client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
        form = await client.get("/login")
        assert form.status_code == 200, form.text
        answer = await client.post(
            "/login", data={"csrf": csrf_of(form.text), "username": username, "password": password, "next": "/"}
        )
        assert answer.status_code == 303, answer.text
        return answer

    @asynccontextmanager
    async def signed_in(self, username: str, password: str = PASSWORD) -> AsyncIterator[httpx.AsyncClient]:
        async with self.browser() as client:
            await self.sign_in(client, username, password)
            yield client

    @asynccontextmanager
    async def admin(self) -> AsyncIterator[httpx.AsyncClient]:
        await self.depot.auth_admin()
        async with self.signed_in(ADMIN[0], ADMIN[1]) as client:
            yield client

    async def publish(self, name: str, version: str, data: bytes, **fields: Any) -> dict[str, Any]:
        """A package (made if missing) and a version of it, once the validator decided."""
        filename = fields.pop("filename", None)
        found = await self.depot.packages.get(f"/packages/{name}", headers=self.depot.callers.owner)
        if found.status_code == 404:
            await self.depot.create(name, **fields)
        await self.depot.upload(name, version, data, filename=filename)
        return await self.depot.decided(name, version)


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def web_settings(depot: Depot, **overrides: Any) -> WebSettings:
    return WebSettings(
        **{
            "auth_url": str(depot.auth.base_url).rstrip("/"),
            "packages_url": str(depot.packages.base_url).rstrip("/"),
            "validate_url": str(depot.validator.base_url).rstrip("/"),
            "session_key": SESSION_KEY,
            "log_format": "json",
            **overrides,
        }
    )


@asynccontextmanager
async def open_site(depot: Depot, **overrides: Any) -> AsyncIterator[Site]:
    settings = web_settings(depot, **overrides)
    async with real_server(create_app(settings)) as url:
        yield Site(depot, url, settings)


@pytest.fixture
async def site(servers: Servers, database_url: str, bucket: str, tmp_path: Path) -> AsyncIterator[Site]:
    async with open_depot(servers, database_url, bucket, tmp_path) as depot, open_site(depot) as opened:
        yield opened
