"""Registration, users, groups and the admin bootstrap, over HTTP against a real database."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from auth_service.app import create_app
from tests.helpers import eventually, in_process
from tests.integration.auth.conftest import ADMIN, Api, auth_settings, bearer, wait_for_admin


async def test_register_creates_a_plain_user(api: Api) -> None:
    user = await api.register("Alice.Smith")
    assert user["username"] == "alice.smith"
    assert user["roles"] == []
    assert user["groups"] == []
    assert user["disabled"] is False
    assert user["email"] is None
    assert user["created_at"].endswith("Z") or "+00:00" in user["created_at"]
    again = await api.client.post("/auth/register", json={"username": "ALICE.smith", "password": "x" * 8})
    assert again.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"username": "eve", "password": "password1", "roles": ["admin"]},
        {"username": "eve", "password": "password1", "groups": ["staff"]},
        {"username": "ev", "password": "password1"},
        {"username": "e" * 65, "password": "password1"},
        {"username": "_eve", "password": "password1"},
        {"username": "robert'); DROP TABLE users;--", "password": "password1"},
        {"username": "eve", "password": "short"},
        {"username": "eve", "password": "p" * 1025},
        {"username": "eve", "password": "password1", "email": "not-an-email"},
    ],
)
async def test_register_refuses_bad_input(api: Api, body: dict[str, object]) -> None:
    response = await api.client.post("/auth/register", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["errors"]


async def test_any_characters_in_passwords(api: Api) -> None:
    for password in ["'; DROP TABLE auth.users; --", "p" * 1024, "ünïcødé ✓ 密码 \u0000 nul"]:
        name = f"user{len(password)}"
        await api.register(name, password)
        assert (await api.login(name, password))["token_type"] == "Bearer"


async def test_registration_can_be_closed(database_url: str, tmp_path: Path) -> None:
    async with in_process(create_app(auth_settings(database_url, tmp_path, registration_open=False))) as client:
        await wait_for_admin(client)
        response = await client.post("/auth/register", json={"username": "eve", "password": "password1"})
        assert response.status_code == 403


async def test_admin_is_bootstrapped_once_and_never_overwritten(database_url: str, tmp_path: Path) -> None:
    async with in_process(create_app(auth_settings(database_url, tmp_path))) as client:
        await wait_for_admin(client)
        me = (await client.get("/auth/me", headers=await Api(client).admin())).json()
        assert me["roles"] == ["admin"]
    other_password = "a different one entirely"
    restarted = create_app(auth_settings(database_url, tmp_path, admin_password=other_password))
    async with in_process(restarted) as client:
        api = Api(client)
        await wait_for_admin(client)  # still the first password
        refused = await client.post("/auth/login", json={"username": ADMIN[0], "password": other_password})
        assert refused.status_code == 401
        users = (await client.get("/auth/users", headers=await api.admin())).json()["items"]
        assert [u["username"] for u in users if "admin" in u["roles"]] == [ADMIN[0]]


async def test_an_existing_non_admin_account_is_not_taken_over(
    capsys: pytest.CaptureFixture[str], database_url: str, tmp_path: Path
) -> None:
    without_admin = auth_settings(database_url, tmp_path, admin_username=None, admin_password=None)
    async with in_process(create_app(without_admin)) as client:
        await Api(client).register(ADMIN[0], "the user's own password")
    async with in_process(create_app(auth_settings(database_url, tmp_path))) as client:
        await eventually(lambda: "admin_bootstrap_skipped" in capsys.readouterr().err)
        api = Api(client)
        refused = await client.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        assert refused.status_code == 401
        own = await api.login(ADMIN[0], "the user's own password")
        assert jwt.decode(own["access_token"], options={"verify_signature": False})["roles"] == []


async def test_users_are_admin_only_and_paginated(api: Api) -> None:
    for name in ("carol", "dave", "dan", "erin"):
        await api.register(name)
    user = await api.user("frank")
    denied = await api.client.get("/auth/users", headers=user)
    assert denied.status_code == 403
    anonymous = await api.client.get("/auth/users")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"

    admin = await api.admin()
    first = (await api.client.get("/auth/users", params={"limit": 2}, headers=admin)).json()
    second = (
        await api.client.get("/auth/users", params={"limit": 2, "cursor": first["next_cursor"]}, headers=admin)
    ).json()
    names = [u["username"] for u in first["items"] + second["items"]]
    assert names == ["carol", "dan", "dave", "erin"]
    matching = (await api.client.get("/auth/users", params={"q": "DA"}, headers=admin)).json()
    assert [u["username"] for u in matching["items"]] == ["dan", "dave"]
    assert matching["next_cursor"] is None
    wildcard = (await api.client.get("/auth/users", params={"q": "%"}, headers=admin)).json()
    assert wildcard["items"] == []
    bad_cursor = await api.client.get("/auth/users", params={"cursor": "!!"}, headers=admin)
    assert bad_cursor.status_code == 400


async def test_admin_creates_users_with_roles_and_groups(api: Api) -> None:
    admin = await api.admin()
    assert (await api.client.post("/auth/groups", json={"name": "Group_106"}, headers=admin)).status_code == 201
    body = {"username": "svc", "password": "password1", "roles": ["service"], "groups": ["Group_106"]}
    created = await api.client.post("/auth/users", json=body, headers=admin)
    assert created.status_code == 201
    assert created.json()["roles"] == ["service"]
    assert created.json()["groups"] == ["Group_106"]
    missing = {**body, "username": "svc2", "groups": ["group_106"]}
    assert (await api.client.post("/auth/users", json=missing, headers=admin)).status_code == 404
    assert (await api.client.post("/auth/users", json=body, headers=admin)).status_code == 409
    bad_role = {**body, "username": "svc3", "roles": ["root"]}
    assert (await api.client.post("/auth/users", json=bad_role, headers=admin)).status_code == 400


async def test_users_read_themselves_only(api: Api) -> None:
    grace = await api.user("grace")
    await api.register("heidi")
    assert (await api.client.get("/auth/users/GRACE", headers=grace)).json()["username"] == "grace"
    assert (await api.client.get("/auth/users/heidi", headers=grace)).status_code == 403
    admin = await api.admin()
    assert (await api.client.get("/auth/users/heidi", headers=admin)).status_code == 200
    assert (await api.client.get("/auth/users/nobody", headers=admin)).status_code == 404


async def test_disabling_a_user_revokes_their_tokens(api: Api) -> None:
    await api.register("ivan")
    pair = await api.login("ivan")
    api_token = await api.client.post("/auth/api-tokens", json={"name": "ci"}, headers=bearer(pair["access_token"]))
    admin = await api.admin()
    patched = await api.client.patch("/auth/users/ivan", json={"disabled": True}, headers=admin)
    assert patched.json()["disabled"] is True
    assert (await api.client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})).status_code == 401
    grant = {"grant_type": "api_token", "api_token": api_token.json()["token"]}
    assert (await api.client.post("/auth/token", json=grant)).status_code == 401
    login = await api.client.post("/auth/login", json={"username": "ivan", "password": "correct horse battery"})
    assert login.status_code == 401
    assert login.json()["detail"] == "This account is disabled."


async def test_admin_password_reset_revokes_and_takes_effect(api: Api) -> None:
    await api.register("judy")
    pair = await api.login("judy")
    admin = await api.admin()
    response = await api.client.patch("/auth/users/judy", json={"password": "brand new secret"}, headers=admin)
    assert response.status_code == 200
    assert (await api.client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})).status_code == 401
    assert (await api.login("judy", "brand new secret"))["access_token"]


async def test_deleted_user_cannot_refresh(api: Api) -> None:
    await api.register("kim")
    pair = await api.login("kim")
    admin = await api.admin()
    assert (await api.client.delete("/auth/users/kim", headers=admin)).status_code == 204
    assert (await api.client.delete("/auth/users/kim", headers=admin)).status_code == 404
    assert (await api.client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})).status_code == 401
    assert (await api.client.get("/auth/me", headers=bearer(pair["access_token"]))).status_code == 401


async def test_groups_and_membership_show_in_later_tokens(api: Api) -> None:
    admin = await api.admin()
    user = await api.user("liam")
    assert (await api.client.post("/auth/groups", json={"name": "ml-Team"}, headers=user)).status_code == 403
    created = await api.client.post("/auth/groups", json={"name": "ml-Team", "description": "models"}, headers=admin)
    assert created.json() == {"name": "ml-Team", "description": "models", "member_count": 0}
    assert (await api.client.post("/auth/groups", json={"name": "ml-Team"}, headers=admin)).status_code == 409
    for _ in range(2):  # idempotent
        put = await api.client.put("/auth/groups/ml-Team/members/LIAM", headers=admin)
        assert put.status_code == 204
    assert (await api.client.put("/auth/groups/ml-Team/members/nobody", headers=admin)).status_code == 404
    assert (await api.client.put("/auth/groups/none/members/liam", headers=admin)).status_code == 404

    groups = (await api.client.get("/auth/groups", headers=user)).json()
    assert groups["items"] == [{"name": "ml-Team", "description": "models", "member_count": 1}]
    token = (await api.login("liam"))["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["groups"] == ["ml-Team"]
    assert (await api.client.get("/auth/me", headers=bearer(token))).json()["groups"] == ["ml-Team"]

    assert (await api.client.delete("/auth/groups/ml-Team/members/liam", headers=admin)).status_code == 204
    token = (await api.login("liam"))["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["groups"] == []
    assert (await api.client.delete("/auth/groups/ml-Team", headers=admin)).status_code == 204
    assert (await api.client.delete("/auth/groups/ml-Team", headers=admin)).status_code == 404


API_SECTION_2 = {
    ("post", "/auth/register"), ("post", "/auth/login"), ("post", "/auth/refresh"), ("post", "/auth/logout"),
    ("get", "/auth/me"), ("put", "/auth/me/password"), ("post", "/auth/api-tokens"), ("get", "/auth/api-tokens"),
    ("delete", "/auth/api-tokens/{token_id}"), ("post", "/auth/token"), ("get", "/auth/users"),
    ("post", "/auth/users"), ("get", "/auth/users/{username}"), ("patch", "/auth/users/{username}"),
    ("delete", "/auth/users/{username}"), ("get", "/auth/groups"), ("post", "/auth/groups"),
    ("delete", "/auth/groups/{name}"), ("put", "/auth/groups/{name}/members/{username}"),
    ("delete", "/auth/groups/{name}/members/{username}"), ("get", "/auth/.well-known/jwks.json"),
}  # fmt: skip


async def test_every_endpoint_of_the_contract_is_in_the_openapi_document(api: Api) -> None:
    document = (await api.client.get("/auth/openapi.json")).json()
    operations = {(method, path) for path, item in document["paths"].items() for method in item}
    assert operations - {("get", "/auth/health"), ("get", "/auth/health/ready")} == API_SECTION_2
    register = document["paths"]["/auth/register"]["post"]
    assert {"201", "400", "403", "409"} <= set(register["responses"])
