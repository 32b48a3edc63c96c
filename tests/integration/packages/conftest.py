"""A package_service app on the test database and bucket, and callers with tokens of every kind.

Tokens are minted here with a key that the app is configured to trust, so these tests exercise
real signature verification without running auth_service (the cross-service path is tested in
tests/integration/auth and tests/e2e).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aioboto3
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.applications import Starlette

from common.auth import AUDIENCE, key_id
from package_service.app import create_app
from package_service.settings import PackageSettings
from tests.conftest import Servers, s3_client_options
from tests.helpers import in_process, service_settings

MAX_ARTIFACT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Signer:
    key: ed25519.Ed25519PrivateKey

    @property
    def public_pem(self) -> str:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return public.decode()

    def headers(self, username: str, groups: Iterable[str] = (), roles: Iterable[str] = ()) -> dict[str, str]:
        now = int(time.time())
        claims = {
            "iss": "depot", "aud": AUDIENCE, "sub": str(uuid.uuid4()), "name": username, "groups": list(groups),
            "roles": list(roles), "iat": now, "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex,
        }  # fmt: skip
        kid = key_id(self.key.public_key())
        return {"Authorization": f"Bearer {jwt.encode(claims, self.key, algorithm='EdDSA', headers={'kid': kid})}"}


@dataclass(frozen=True)
class Callers:
    """Everyone the access rules speak of."""

    owner: dict[str, str]
    writer: dict[str, str]
    reader: dict[str, str]
    stranger: dict[str, str]
    admin: dict[str, str]
    service: dict[str, str]


@dataclass
class Registry:
    client: httpx.AsyncClient
    app: Starlette
    callers: Callers
    signer: Signer
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
        async with aioboto3.Session().client(**s3_client_options(self.servers)) as s3:
            listed = await s3.list_objects_v2(Bucket=self.bucket)
            return [item["Key"] for item in listed.get("Contents", [])]

    async def open_multipart_uploads(self) -> list[str]:
        async with aioboto3.Session().client(**s3_client_options(self.servers)) as s3:
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
    signer = Signer(ed25519.Ed25519PrivateKey.generate())
    settings = PackageSettings(
        **service_settings(
            servers, database_url, bucket, auth_public_keys=signer.public_pem, max_artifact_bytes=MAX_ARTIFACT_BYTES
        )
    )
    callers = Callers(
        owner=signer.headers("olivia"),
        writer=signer.headers("wendy", groups=["writers"]),
        reader=signer.headers("rita", groups=["readers"]),
        stranger=signer.headers("sam", groups=["Writers"]),
        admin=signer.headers("ada", roles=["admin"]),
        service=signer.headers("depot-service", roles=["service"]),
    )
    app = create_app(settings)
    async with in_process(app) as client:
        yield Registry(client, app, callers, signer, bucket, servers)
