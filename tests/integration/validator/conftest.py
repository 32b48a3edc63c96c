"""The three services wired as they run: auth_service and package_service over real HTTP, the validator under test.

The validator exchanges a real service account's API token at auth_service, asks package_service
for access lists and auth_service for users over HTTP; validation jobs and verdicts travel through
the queue between package_service and the validator. Callers' tokens are minted with a key both
services trust (as in the package tests), so that every kind of caller is at hand; users that
must exist in auth_service are made there by its bootstrapped admin (`Depot.add_user`).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from auth_service.app import create_app as create_auth_app
from auth_service.cli import service_token
from devstack.tokens import TokenSigner
from package_service.app import create_app as create_package_app
from package_service.settings import PackageSettings
from tests.conftest import Servers
from tests.helpers import WAIT_SECONDS, eventually, in_process, real_server, service_settings
from tests.integration.auth.conftest import ADMIN, auth_settings, bearer, wait_for_admin
from tests.integration.packages.conftest import Callers
from validator_service.app import create_app as create_validator_app
from validator_service.settings import ValidatorSettings

SERVICE_ACCOUNT = "depot-service"
# A verdict goes through two queues, S3 and the validator's checks: allow it more than other waits.
VERDICT_SECONDS = 2 * WAIT_SECONDS


@dataclass
class Depot:
    packages: httpx.AsyncClient  # package_service, over real HTTP
    validator: httpx.AsyncClient
    validator_app: Starlette
    callers: Callers
    signer: TokenSigner
    validator_settings: dict[str, Any]  # to start another validator on the same stack
    auth: httpx.AsyncClient  # auth_service, over real HTTP

    async def auth_admin(self) -> dict[str, str]:
        """Headers of auth_service's bootstrapped admin (a token auth_service itself issued)."""
        await wait_for_admin(self.auth)
        response = await self.auth.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        assert response.status_code == 200, response.text
        return bearer(response.json()["access_token"])

    async def add_user(self, username: str, groups: tuple[str, ...] = (), roles: tuple[str, ...] = ()) -> None:
        """A user in auth_service, in `groups` (made if missing) and with `roles`."""
        admin = await self.auth_admin()
        for group in groups:
            made = await self.auth.post("/auth/groups", json={"name": group}, headers=admin)
            assert made.status_code in {201, 409}, made.text
        body = {"username": username, "password": "correct horse battery", "groups": groups, "roles": roles}
        response = await self.auth.post("/auth/users", json=body, headers=admin)
        assert response.status_code == 201, response.text

    async def create(self, name: str, headers: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
        response = await self.packages.post(
            "/packages", json={"name": name, **fields}, headers=headers or self.callers.owner
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def upload(self, name: str, version: str, data: bytes, filename: str | None = None) -> dict[str, Any]:
        headers = {**self.callers.owner, **({"X-Filename": filename} if filename else {})}
        response = await self.packages.put(
            f"/packages/{name}/versions/{version}/content", content=data, headers=headers
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def version(self, name: str, version: str) -> dict[str, Any]:
        response = await self.packages.get(f"/packages/{name}/versions/{version}", headers=self.callers.admin)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def decided(self, name: str, version: str, timeout: float = VERDICT_SECONDS) -> dict[str, Any]:
        """The version once it is no longer pending."""

        async def found() -> dict[str, Any] | None:
            current = await self.version(name, version)
            return None if current["status"] == "pending" else current

        return await eventually(found, within=timeout, interval=0.1, message=f"a verdict on {name} {version}")

    async def report(self, name: str, version: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.validator.get(f"/validate/reports/{name}/{version}", headers=headers or self.callers.admin)

    async def rerun(
        self, name: str, version: str, timeout: float = VERDICT_SECONDS
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Validate a version again; (version, report) once the version agrees with the new report."""

        async def queued() -> bool:
            # A rerun asked for while the last validation's job is still finishing is that validation.
            path = f"/validate/reports/{name}/{version}/rerun"
            response = await self.validator.post(path, headers=self.callers.admin)
            assert response.status_code == 202, response.text
            return bool(response.json()["status"] == "queued")

        async def agreed() -> tuple[dict[str, Any], dict[str, Any]] | None:
            report = (await self.report(name, version)).json()
            found = await self.version(name, version)
            if report["status"] in {"passed", "failed"} and found["validation"] == summary_of(report):
                return found, report
            return None

        await eventually(queued, within=timeout, interval=0.1, message=f"a rerun of {name} {version} queued")
        return await eventually(agreed, within=timeout, interval=0.1, message=f"the rerun's verdict on {name}")

    async def sql(self, statement: str, *args: Any) -> list[Any]:
        """Rows of a query on the services' database (their schemas are side by side)."""
        engine = self.validator_app.state.resources.engine
        async with engine.connect() as connection:
            result = await connection.exec_driver_sql(statement, args)
            return list(result.all())


def checks_of(report: dict[str, Any]) -> dict[str, str]:
    """`{check id: status}` of a report or a version's validation summary."""
    return {check["id"]: check["status"] for check in report["checks"]}


def summary_of(report: dict[str, Any]) -> dict[str, Any]:
    """What a version keeps of its report (its `validation`)."""
    return {"status": report["status"], "checks": report["checks"]}


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def validator_settings(
    servers: Servers, database_url: str, bucket: str, signer: TokenSigner, auth_url: str, packages_url: str, token: str
) -> dict[str, Any]:
    return service_settings(
        servers, database_url, bucket, auth_public_keys=signer.public_pem,
        auth_jwks_url=f"{auth_url}/auth/.well-known/jwks.json", auth_url=auth_url, packages_url=packages_url,
        service_token=token, validation_poll_seconds=0.5, access_cache_seconds=0,
    )  # fmt: skip


@asynccontextmanager
async def open_depot(
    servers: Servers, database_url: str, bucket: str, data_dir: Path, service_urls: Mapping[str, str] | None = None
) -> AsyncIterator[Depot]:
    """auth_service and package_service served over HTTP, and a validator in process, for the block.

    `service_urls` gives a service (by name) a database URL of its own, as each has its own role on
    AWS; `database_url` is then the owner's, which provisions the service account as the migration does.
    """
    urls = service_urls or {}
    signer = TokenSigner()
    token = await service_token(auth_settings(database_url, data_dir), SERVICE_ACCOUNT)
    settings = auth_settings(urls.get("auth_service", database_url), data_dir)
    async with real_server(create_auth_app(settings)) as auth_url:
        package_settings = PackageSettings(
            **service_settings(
                servers, urls.get("package_service", database_url), bucket, auth_public_keys=signer.public_pem,
                auth_jwks_url=f"{auth_url}/auth/.well-known/jwks.json",
            )
        )  # fmt: skip
        async with real_server(create_package_app(package_settings)) as packages_url:
            validator_url = urls.get("validator_service", database_url)
            options = validator_settings(servers, validator_url, bucket, signer, auth_url, packages_url, token)
            validator_app = create_validator_app(ValidatorSettings(**options))
            async with (
                httpx.AsyncClient(base_url=packages_url, timeout=30) as packages,
                httpx.AsyncClient(base_url=auth_url, timeout=30) as auth,
                in_process(validator_app) as validator,
            ):
                yield Depot(packages, validator, validator_app, Callers.signed(signer), signer, options, auth)


@pytest.fixture
async def depot(servers: Servers, database_url: str, bucket: str, tmp_path: Path) -> AsyncIterator[Depot]:
    async with open_depot(servers, database_url, bucket, tmp_path) as opened:
        yield opened
