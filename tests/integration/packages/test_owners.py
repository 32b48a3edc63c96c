"""Admins move packages to other owners, who must be existing users: auth_service answers, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from auth_service.app import create_app as create_auth_app
from devstack.processes import free_port
from package_service.app import create_app
from package_service.settings import PackageSettings
from tests.conftest import Servers
from tests.helpers import in_process, real_server, service_settings
from tests.integration.auth.conftest import Api, auth_settings, wait_for_admin


@dataclass
class Registry:
    """package_service trusting a real auth_service, with users registered there."""

    auth: Api
    packages: httpx.AsyncClient
    admin: dict[str, str]
    olivia: dict[str, str]
    bob: dict[str, str]


@pytest.fixture
async def registry(servers: Servers, database_url: str, bucket: str, tmp_path: Path) -> AsyncIterator[Registry]:
    auth_app = create_auth_app(auth_settings(database_url, tmp_path))
    async with real_server(auth_app) as auth_url, httpx.AsyncClient(base_url=auth_url) as auth_client:
        await wait_for_admin(auth_client)
        api = Api(auth_client)
        olivia, bob = await api.user("olivia"), await api.user("bob")
        await api.register("carl")
        jwks_url = f"{auth_url}/auth/.well-known/jwks.json"
        settings = PackageSettings(**service_settings(servers, database_url, bucket, auth_jwks_url=jwks_url))
        async with in_process(create_app(settings)) as client:
            yield Registry(api, client, await api.admin(), olivia, bob)


async def owner_of(registry: Registry, name: str) -> str:
    found = await registry.packages.get(f"/packages/{name}", headers=registry.admin)
    owner: str = found.json()["owner"]
    return owner


async def test_an_admin_moves_a_package_to_an_existing_user(registry: Registry) -> None:
    created = await registry.packages.post("/packages", json={"name": "model"}, headers=registry.olivia)
    assert created.status_code == 201
    refused = await registry.packages.patch("/packages/model", json={"owner": "bob"}, headers=registry.olivia)
    assert refused.status_code == 403, "only admins"

    moved = await registry.packages.patch(
        "/packages/model", json={"owner": "BOB", "description": "moved"}, headers=registry.admin
    )
    assert moved.status_code == 200, moved.text
    assert (moved.json()["owner"], moved.json()["description"]) == ("bob", "moved")
    assert (await registry.packages.get("/packages/model", headers=registry.olivia)).status_code == 404
    assert (await registry.packages.get("/packages/model", headers=registry.bob)).status_code == 200

    # The name of a deleted package is reserved for its last owner: now bob.
    assert (await registry.packages.delete("/packages/model", headers=registry.bob)).status_code == 204
    taken = await registry.packages.post("/packages", json={"name": "model"}, headers=registry.olivia)
    assert taken.status_code == 409
    assert (await registry.packages.post("/packages", json={"name": "MODEL"}, headers=registry.bob)).status_code == 201


async def test_unknown_and_deleted_users_cannot_own_packages(registry: Registry) -> None:
    await registry.packages.post("/packages", json={"name": "model"}, headers=registry.olivia)
    deleted = await registry.auth.client.delete("/auth/users/carl", headers=registry.admin)
    assert deleted.status_code == 204
    for nobody in ("ghost", "carl", "Ghost.Writer"):
        refused = await registry.packages.patch("/packages/model", json={"owner": nobody}, headers=registry.admin)
        assert refused.status_code == 400, (nobody, refused.text)
        assert refused.json()["errors"] == [{"loc": ["body", "owner"], "msg": "No such user."}]
    assert await owner_of(registry, "model") == "olivia"


async def test_an_owner_cannot_be_checked_while_auth_service_is_down(
    servers: Servers, database_url: str, bucket: str, registry: Registry
) -> None:
    await registry.packages.post("/packages", json={"name": "model"}, headers=registry.olivia)
    jwks = registry.auth.client.base_url.join("/auth/.well-known/jwks.json")
    settings = PackageSettings(
        **service_settings(
            servers, database_url, bucket, auth_jwks_url=str(jwks), auth_url=f"http://127.0.0.1:{free_port()}"
        )
    )
    async with in_process(create_app(settings)) as cut_off:
        refused = await cut_off.patch("/packages/model", json={"owner": "bob"}, headers=registry.admin)
        assert refused.status_code == 503, refused.text
        assert "retry-after" in refused.headers
    assert await owner_of(registry, "model") == "olivia"
