"""Logins, throttling, refresh rotation, logout, API tokens and the JWKS, against a real database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import jwt
import pytest

from auth_service.app import create_app
from auth_service.service import THROTTLE_AFTER_FAILURES, throttle_window
from common.auth import AUDIENCE, KeySet
from tests.conftest import Servers
from tests.helpers import real_server
from tests.integration.auth.conftest import Api, auth_settings, bearer, wait_for_admin


async def test_login_gives_a_verifiable_token_pair(api: Api) -> None:
    user = await api.register("alice")
    pair = await api.login("ALICE")
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] == 900
    assert pair["refresh_expires_in"] == 30 * 86400
    jwks = (await api.client.get("/auth/.well-known/jwks.json")).json()
    keys = KeySet.from_jwks(jwks)
    header = jwt.get_unverified_header(pair["access_token"])
    key, algorithm = keys[header["kid"]]
    claims = jwt.decode(pair["access_token"], key, algorithms=[algorithm], audience=AUDIENCE, issuer="depot")
    assert algorithm == "EdDSA"
    assert claims["sub"] == user["id"]
    assert claims["name"] == "alice"
    assert claims["groups"] == []
    assert claims["roles"] == []
    assert claims["exp"] - claims["iat"] == 900
    assert claims["jti"]
    assert (await api.client.get("/auth/me", headers=bearer(pair["access_token"]))).json()["username"] == "alice"


async def test_unknown_user_and_wrong_password_look_the_same(api: Api) -> None:
    await api.register("bob")
    wrong = await api.client.post("/auth/login", json={"username": "bob", "password": "wrong password"})
    unknown = await api.client.post("/auth/login", json={"username": "nobody", "password": "wrong password"})
    hostile = await api.client.post("/auth/login", json={"username": "x' OR '1'='1", "password": "' OR 1=1 --"})
    for response in (wrong, unknown, hostile):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    strip = [{k: v for k, v in r.json().items() if k != "request_id"} for r in (wrong, unknown, hostile)]
    assert strip[0] == strip[1] == strip[2]
    too_long = await api.client.post("/auth/login", json={"username": "u" * 300, "password": "p"})
    assert too_long.status_code == 400


async def test_throttle_blocks_after_ten_failures_and_doubles(api: Api, servers: Servers, database_url: str) -> None:
    await api.register("carol")
    bad = {"username": "carol", "password": "nope nope"}
    for _ in range(10):
        assert (await api.client.post("/auth/login", json=bad)).status_code == 401
    blocked = await api.client.post("/auth/login", json={"username": "CAROL", "password": "correct horse battery"})
    assert blocked.status_code == 429
    assert 25 <= int(blocked.headers["retry-after"]) <= 30

    async def expire_block() -> None:
        connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            await connection.execute("UPDATE auth.login_failures SET blocked_until = now() - interval '1 second'")
        finally:
            await connection.close()

    await expire_block()
    assert (await api.client.post("/auth/login", json=bad)).status_code == 401  # the 11th failure
    doubled = await api.client.post("/auth/login", json=bad)
    assert doubled.status_code == 429
    assert 55 <= int(doubled.headers["retry-after"]) <= 60

    await expire_block()
    assert (await api.login("carol"))["access_token"]
    for _ in range(9):  # the success reset the count: nine more failures do not block
        assert (await api.client.post("/auth/login", json=bad)).status_code == 401
    assert (await api.login("carol"))["access_token"]


async def test_unknown_usernames_are_throttled_too(api: Api) -> None:
    bad = {"username": "ghost", "password": "nope nope"}
    for _ in range(10):
        assert (await api.client.post("/auth/login", json=bad)).status_code == 401
    assert (await api.client.post("/auth/login", json=bad)).status_code == 429


async def test_parallel_wrong_passwords_in_two_tasks_are_checked_exactly_ten_times(
    database_url: str, tmp_path: Path
) -> None:
    settings = auth_settings(database_url, tmp_path)
    async with real_server(create_app(settings)) as one, real_server(create_app(settings)) as two:
        async with httpx.AsyncClient(base_url=one) as client:
            await wait_for_admin(client)
            await Api(client).register("target")

        async def guess_until_throttled(base_url: str) -> list[int]:
            statuses: list[int] = []
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
                while not statuses or statuses[-1] != 429:
                    response = await http.post("/auth/login", json={"username": "target", "password": "wrong guess"})
                    statuses.append(response.status_code)
            return statuses

        clients = [guess_until_throttled(one if i % 2 else two) for i in range(8)]
        statuses = [status for each in await asyncio.gather(*clients) for status in each]
        assert statuses.count(401) == THROTTLE_AFTER_FAILURES, statuses
        assert set(statuses) == {401, 429}
        async with httpx.AsyncClient(base_url=two) as client:  # the block holds in every task
            right = await client.post("/auth/login", json={"username": "target", "password": "correct horse battery"})
            assert right.status_code == 429


def test_throttle_window_doubles_up_to_an_hour() -> None:
    assert [throttle_window(n) for n in (0, 9, 10, 11, 12, 16, 17, 50, 10**6)] == [
        0, 0, 30, 60, 120, 1920, 3600, 3600, 3600,
    ]  # fmt: skip


async def test_refresh_rotates_and_reuse_revokes_the_login(api: Api) -> None:
    await api.register("dave")
    first = await api.login("dave")
    other_login = await api.login("dave")
    second = (await api.client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"]
    reuse = await api.client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401
    revoked = await api.client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert revoked.status_code == 401, "re-use of a spent token revokes its whole login"
    elsewhere = await api.client.post("/auth/refresh", json={"refresh_token": other_login["refresh_token"]})
    assert elsewhere.status_code == 200, "another login of the same user is untouched"


async def test_concurrent_refreshes_of_one_token_have_one_winner(api: Api) -> None:
    await api.register("erin")
    token = (await api.login("erin"))["refresh_token"]
    responses = await asyncio.gather(
        *(api.client.post("/auth/refresh", json={"refresh_token": token}) for _ in range(6))
    )
    assert sorted(r.status_code for r in responses) == [200, 401, 401, 401, 401, 401]


async def test_expired_and_garbage_refresh_tokens_are_refused(api: Api, database_url: str) -> None:
    await api.register("fay")
    pair = await api.login("fay")
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await connection.execute("UPDATE auth.refresh_tokens SET expires_at = now() - interval '1 second'")
    finally:
        await connection.close()
    assert (await api.client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})).status_code == 401
    assert (await api.client.post("/auth/refresh", json={"refresh_token": "garbage"})).status_code == 401
    assert (await api.client.post("/auth/refresh", json={"refresh_token": "x" * 300})).status_code == 400


async def test_logout_ends_the_login(api: Api) -> None:
    await api.register("gus")
    pair = await api.login("gus")
    rotated = (await api.client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})).json()
    assert (await api.client.post("/auth/logout", json={"refresh_token": rotated["refresh_token"]})).status_code == 204
    assert (await api.client.post("/auth/logout", json={"refresh_token": rotated["refresh_token"]})).status_code == 204
    refused = await api.client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert refused.status_code == 401


async def test_password_change_revokes_refresh_tokens(api: Api) -> None:
    await api.register("hal")
    pair = await api.login("hal")
    headers = bearer(pair["access_token"])
    wrong = {"current_password": "not it at all", "new_password": "new password 1"}
    assert (await api.client.put("/auth/me/password", json=wrong, headers=headers)).status_code == 401
    right = {"current_password": "correct horse battery", "new_password": "new password 1"}
    assert (await api.client.put("/auth/me/password", json=right, headers=headers)).status_code == 204
    assert (await api.client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})).status_code == 401
    old = await api.client.post("/auth/login", json={"username": "hal", "password": "correct horse battery"})
    assert old.status_code == 401
    assert (await api.login("hal", "new password 1"))["access_token"]


async def test_api_tokens_lifecycle(api: Api, database_url: str) -> None:
    owner = await api.user("ida")
    created = await api.client.post("/auth/api-tokens", json={"name": "ci", "expires_in_days": 7}, headers=owner)
    assert created.status_code == 201
    token = created.json()
    assert token["token"].startswith("dpt_")
    assert token["last_used_at"] is None

    listed = (await api.client.get("/auth/api-tokens", headers=owner)).json()
    assert [t["id"] for t in listed["items"]] == [token["id"]]
    assert "token" not in listed["items"][0]
    assert token["token"] not in str(listed)

    grant = {"grant_type": "api_token", "api_token": token["token"]}
    exchanged = await api.client.post("/auth/token", json=grant)
    assert exchanged.status_code == 200
    assert set(exchanged.json()) == {"access_token", "token_type", "expires_in"}
    me = await api.client.get("/auth/me", headers=bearer(exchanged.json()["access_token"]))
    assert me.json()["username"] == "ida"
    used = (await api.client.get("/auth/api-tokens", headers=owner)).json()["items"][0]
    assert used["last_used_at"] is not None

    stranger = await api.user("jon")
    assert (await api.client.delete(f"/auth/api-tokens/{token['id']}", headers=stranger)).status_code == 404
    assert (await api.client.delete("/auth/api-tokens/not-a-uuid", headers=owner)).status_code == 404
    assert (await api.client.delete(f"/auth/api-tokens/{token['id']}", headers=owner)).status_code == 204
    assert (await api.client.post("/auth/token", json=grant)).status_code == 401

    expiring = (await api.client.post("/auth/api-tokens", json={"name": "old"}, headers=owner)).json()
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await connection.execute("UPDATE auth.api_tokens SET expires_at = now() - interval '1 second'")
    finally:
        await connection.close()
    expired = await api.client.post("/auth/token", json={"grant_type": "api_token", "api_token": expiring["token"]})
    assert expired.status_code == 401
    admin = await api.admin()
    assert (await api.client.delete(f"/auth/api-tokens/{expiring['id']}", headers=admin)).status_code == 204


@pytest.mark.parametrize(
    "body",
    [
        {"grant_type": "password", "api_token": "dpt_x"},
        {"grant_type": "api_token"},
        {"grant_type": "api_token", "api_token": "dpt_x", "scope": "all"},
    ],
)
async def test_token_grant_validates_its_body(api: Api, body: dict[str, str]) -> None:
    assert (await api.client.post("/auth/token", json=body)).status_code == 400


async def test_api_token_expiry_bounds(api: Api) -> None:
    owner = await api.user("kai")
    for days in (0, 366):
        response = await api.client.post("/auth/api-tokens", json={"name": "x", "expires_in_days": days}, headers=owner)
        assert response.status_code == 400
    default = (await api.client.post("/auth/api-tokens", json={"name": "x"}, headers=owner)).json()
    assert default["expires_at"] > default["created_at"]


async def test_tampered_and_foreign_tokens_are_refused(api: Api) -> None:
    await api.register("lee")
    token = (await api.login("lee"))["access_token"]
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}"
    unsigned = jwt.encode(jwt.decode(token, options={"verify_signature": False}), key=None, algorithm="none")
    for bad in (tampered, unsigned, "not.a.jwt", ""):
        # No token at all arrives as "Bearer": a trailing space is not part of a header's value.
        response = await api.client.get("/auth/me", headers=bearer(bad) if bad else {"Authorization": "Bearer"})
        assert response.status_code == 401, bad
        assert response.headers["www-authenticate"] == "Bearer"


async def test_jwks_publishes_the_signing_key_with_its_kid(api: Api) -> None:
    response = await api.client.get("/auth/.well-known/jwks.json")
    assert response.headers["cache-control"].startswith("public")
    (key,) = response.json()["keys"]
    assert key["kty"] == "OKP"
    assert key["alg"] == "EdDSA"
    assert key["use"] == "sig"
    assert "d" not in key, "never the private part"
    await api.register("mia")
    token = (await api.login("mia"))["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == key["kid"]
