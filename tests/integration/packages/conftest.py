"""A package_service app on the test database and bucket, and callers with tokens of every kind.

Tokens are minted here with a key that the app is configured to trust, so these tests exercise
real signature verification without running auth_service (the cross-service path is tested in
tests/integration/auth and tests/e2e).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from devstack.tokens import TokenSigner
from package_service.app import create_app
from package_service.settings import PackageSettings
from tests.conftest import S3_SESSION, Servers, s3_client_options
from tests.helpers import in_process, service_settings

MAX_ARTIFACT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Callers:
    """Everyone the access rules speak of."""

    owner: dict[str, str]
    writer: dict[str, str]
    reader: dict[str, str]
    stranger: dict[str, str]
    admin: dict[str, str]
    service: dict[str, str]

    @classmethod
    def signed(cls, signer: TokenSigner) -> Callers:
        """Every caller, with tokens from `signer`."""
        return cls(
            owner=signer.headers("olivia"),
            writer=signer.headers("wendy", groups=["writers"]),
            reader=signer.headers("rita", groups=["readers"]),
            stranger=signer.headers("sam", groups=["Writers"]),
            admin=signer.headers("ada", roles=["admin"]),
            service=signer.headers("depot-service", roles=["service"]),
        )


@dataclass
class Registry:
    client: httpx.AsyncClient
    app: Starlette
    callers: Callers
    signer: TokenSigner
    bucket: str
    servers: Servers

    async def create(self, name: str, headers: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/packages", json={"name": name, **fields}, headers=headers or self.callers.owner
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def upload(
        self, name: str, version: str, data: bytes, headers: dict[str, str] | None = None, **extra: str
    ) -> httpx.Response:
        return await self.client.put(
            f"/packages/{name}/versions/{version}/content",
            content=data,
            headers={**(headers or self.callers.owner), **extra},
        )

    async def objects(self) -> list[str]:
        async with S3_SESSION.client(**s3_client_options(self.servers)) as s3:
            listed = await s3.list_objects_v2(Bucket=self.bucket)
            return [item["Key"] for item in listed.get("Contents", [])]

    async def open_multipart_uploads(self) -> list[str]:
        async with S3_SESSION.client(**s3_client_options(self.servers)) as s3:
            listed = await s3.list_multipart_uploads(Bucket=self.bucket)
            return [item["Key"] for item in listed.get("Uploads", [])]

    async def sql(self, statement: str, *args: Any) -> list[Any]:
        engine = self.app.state.resources.engine
        async with engine.begin() as connection:
            result = (
                await connection.exec_driver_sql(statement, args)
                if args
                else await connection.exec_driver_sql(statement)
            )
            return list(result.all()) if result.returns_rows else []


@pytest.fixture
async def registry(servers: Servers, database_url: str, bucket: str) -> AsyncIterator[Registry]:
    signer = TokenSigner()
    settings = PackageSettings(
        **service_settings(
            servers, database_url, bucket, auth_public_keys=signer.public_pem, max_artifact_bytes=MAX_ARTIFACT_BYTES
        )
    )
    callers = Callers.signed(signer)
    app = create_app(settings)
    async with in_process(app) as client:
        yield Registry(client, app, callers, signer, bucket, servers)
