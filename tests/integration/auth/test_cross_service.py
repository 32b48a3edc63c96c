"""Another service accepts auth_service's tokens through the JWKS, over real HTTP, and nothing else."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import BaseModel

from auth_service.app import create_app as create_auth_app
from common.api import Call, Operation
from common.app import create_service_app
from package_service.settings import PackageSettings
from tests.conftest import Servers
from tests.helpers import in_process, real_server, service_settings
from tests.integration.auth.conftest import Api, auth_settings, bearer, wait_for_admin


class WhoAmI(BaseModel):
    username: str
    roles: list[str]


async def whoami(call: Call[None, None]) -> WhoAmI:
    principal = call.principal
    return WhoAmI(username=principal.username, roles=sorted(principal.roles))


def forged(kid: str, claims: dict[str, object]) -> str:
    return jwt.encode(claims, ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid})


async def test_tokens_verify_in_another_service_through_the_jwks(
    servers: Servers, database_url: str, bucket: str, tmp_path: Path
) -> None:
    async with real_server(create_auth_app(auth_settings(database_url, tmp_path))) as auth_url:
        async with in_process(create_auth_app(auth_settings(database_url, tmp_path))) as auth_client:
            await wait_for_admin(auth_client)
            api = Api(auth_client)
            await api.register("nina")
            token = (await api.login("nina"))["access_token"]

        settings = PackageSettings(
            **service_settings(servers, database_url, bucket, auth_jwks_url=f"{auth_url}/auth/.well-known/jwks.json")
        )
        other = create_service_app(
            service="package_service", prefix="/packages", settings=settings,
            operations=[Operation("GET", "/whoami", whoami, "Who is calling.", response=WhoAmI)],
        )  # fmt: skip
        async with in_process(other) as client:
            accepted = await client.get("/packages/whoami", headers=bearer(token))
            assert accepted.status_code == 200
            assert accepted.json() == {"username": "nina", "roles": []}

            claims = jwt.decode(token, options={"verify_signature": False})
            kid = jwt.get_unverified_header(token)["kid"]
            now = int(time.time())
            for bad in (
                forged(kid, claims | {"name": "admin", "roles": ["admin"]}),
                forged("another-kid", claims),
                forged(kid, {**claims, "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}),
            ):
                refused = await client.get("/packages/whoami", headers=bearer(bad))
                assert refused.status_code == 401
                assert refused.headers["www-authenticate"] == "Bearer"
            assert (await client.get("/packages/whoami")).status_code == 401
