"""An auth_service app on the test database, with cheap password hashing and a bootstrapped admin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from auth_service.app import create_app
from auth_service.settings import AuthSettings
from tests.helpers import eventually, in_process

ADMIN = ("root-admin", "quote' \"; DROP TABLE auth.users; --")
CHEAP_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}


def auth_settings(database_url: str, data_dir: Path, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "admin_username": ADMIN[0],
        "admin_password": ADMIN[1],
        "log_format": "json",
        **CHEAP_ARGON2,
    }
    return AuthSettings(**(values | overrides))


class Api:
    """A client of auth_service with the calls the tests make again and again."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def register(self, username: str, password: str = "correct horse battery") -> dict[str, Any]:
        response = await self.client.post("/auth/register", json={"username": username, "password": password})
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def login(self, username: str, password: str = "correct horse battery") -> dict[str, Any]:
        response = await self.client.post("/auth/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def user(self, username: str, password: str = "correct horse battery") -> dict[str, str]:
        """Register and log in; the headers of that user."""
        await self.register(username, password)
        return bearer((await self.login(username, password))["access_token"])

    async def admin(self) -> dict[str, str]:
        return bearer((await self.login(*ADMIN))["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def wait_for_admin(client: httpx.AsyncClient) -> None:
    async def logged_in() -> bool:
        response = await client.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        return response.status_code == 200

    await eventually(logged_in, message="the admin, created at start-up, logs in")


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with in_process(create_app(auth_settings(database_url, tmp_path))) as client:
        await wait_for_admin(client)
        yield Api(client)
