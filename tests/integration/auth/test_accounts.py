"""Registration, users, groups and the admin bootstrap, over HTTP against a real database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import jwt
import pytest

from auth_service.app import create_app
from common import migrations
from tests.conftest import Servers
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


async def create(api: Api, admin: dict[str, str], username: str, *roles: str) -> dict[str, str]:
    """An account made by an admin, with roles; the headers of its first login."""
    body = {"username": username, "password": "correct horse battery", "roles": list(roles)}
    created = await api.client.post("/auth/users", json=body, headers=admin)
    assert created.status_code == 201, created.text
    return bearer((await api.login(username))["access_token"])


async def test_a_deleted_users_name_is_never_given_again(api: Api) -> None:
    await api.register("carol")
    admin = await api.admin()
    assert (await api.client.delete("/auth/users/carol", headers=admin)).status_code == 204
    for name in ("carol", "CAROL", "Carol"):
        body = {"username": name, "password": "password1"}
        again = await api.client.post("/auth/register", json=body)
        assert again.status_code == 409, again.text
        assert "never given to another account" in again.json()["detail"]
        by_admin = await api.client.post("/auth/users", json=body | {"roles": ["admin"]}, headers=admin)
        assert by_admin.status_code == 409, by_admin.text
    assert (await api.client.get("/auth/users/carol", headers=admin)).status_code == 404


async def test_names_of_accounts_made_before_the_migration_are_spent(
    servers: Servers, database_url: str, tmp_path: Path
) -> None:
    await migrations.downgrade(database_url, ["auth"], "0002")
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await connection.execute("INSERT INTO auth.users (username, password_hash) VALUES ('olduser', 'x')")
    finally:
        await connection.close()
    await migrations.upgrade(database_url, ["auth"])
    async with in_process(create_app(auth_settings(database_url, tmp_path))) as client:
        await wait_for_admin(client)
        admin = await Api(client).admin()
        assert (await client.delete("/auth/users/olduser", headers=admin)).status_code == 204
        again = await client.post("/auth/register", json={"username": "OldUser", "password": "password1"})
        assert again.status_code == 409


async def test_deleting_a_user_revokes_every_token_of_theirs(api: Api) -> None:
    await api.register("dora")
    pair = await api.login("dora")
    token = await api.client.post("/auth/api-tokens", json={"name": "ci"}, headers=bearer(pair["access_token"]))
    grant = {"grant_type": "api_token", "api_token": token.json()["token"]}
    assert (await api.client.post("/auth/token", json=grant)).status_code == 200
    admin = await api.admin()
    assert (await api.client.delete("/auth/users/dora", headers=admin)).status_code == 204
    assert (await api.client.post("/auth/token", json=grant)).status_code == 401
    assert (await api.client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})).status_code == 401
    refused = await api.client.post("/auth/api-tokens", json={"name": "again"}, headers=bearer(pair["access_token"]))
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"] == "Bearer"


# A body that each operation accepts, so that only the caller can be at fault.
BODIES: dict[tuple[str, str], dict[str, object]] = {
    ("put", "/auth/me/password"): {"current_password": "correct horse battery", "new_password": "another one 1"},
    ("post", "/auth/api-tokens"): {"name": "more"},
    ("post", "/auth/users"): {"username": "newcomer", "password": "password1", "roles": ["admin"]},
    ("patch", "/auth/users/{username}"): {"roles": ["admin"]},
    ("post", "/auth/groups"): {"name": "new-group"},
}


async def test_a_deleted_admins_access_token_is_refused_by_every_operation(api: Api) -> None:
    admin = await api.admin()
    gone = await create(api, admin, "erin", "admin")
    assert (await api.client.post("/auth/groups", json={"name": "staff"}, headers=admin)).status_code == 201
    kept = (await api.client.post("/auth/api-tokens", json={"name": "kept"}, headers=admin)).json()
    assert (await api.client.delete("/auth/users/erin", headers=admin)).status_code == 204

    document = (await api.client.get("/auth/openapi.json")).json()
    needing_a_caller = [
        (method, path) for path, item in document["paths"].items() for method, op in item.items() if op.get("security")
    ]
    assert len(needing_a_caller) == 15  # all but register, login, refresh, logout, token and the JWKS
    values = {"{username}": "root-admin", "{name}": "staff", "{token_id}": kept["id"]}
    for method, template in needing_a_caller:
        path = template
        for placeholder, value in values.items():
            path = path.replace(placeholder, value)
        response = await api.client.request(method, path, json=BODIES.get((method, template)), headers=gone)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["detail"] == "The user of this token no longer exists."
        # The account is checked before the body is read: a bad body tells such a caller nothing either.
        garbled = {**gone, "content-type": "application/json"}
        response = await api.client.request(method, path, content=b'{"roles": [', headers=garbled)
        assert response.status_code == 401, (method, path, response.text)

    me = (await api.client.get("/auth/me", headers=admin)).json()  # nothing was done in erin's name
    assert me["roles"] == ["admin"]
    assert [t["id"] for t in (await api.client.get("/auth/api-tokens", headers=admin)).json()["items"]] == [kept["id"]]
    users = (await api.client.get("/auth/users", headers=admin)).json()["items"]
    assert [u["username"] for u in users] == ["root-admin"]


async def test_a_disabled_or_demoted_users_access_token_stops_working_here(api: Api) -> None:
    admin = await api.admin()
    frank = await create(api, admin, "frank", "admin")
    assert (await api.client.get("/auth/users", headers=frank)).status_code == 200
    assert (await api.client.patch("/auth/users/frank", json={"roles": []}, headers=admin)).status_code == 200
    demoted = await api.client.get("/auth/users", headers=frank)
    assert demoted.status_code == 401, "the token claims a role that frank lost"
    assert (await api.client.delete("/auth/users/root-admin", headers=frank)).status_code == 401
    frank = bearer((await api.login("frank"))["access_token"])
    assert (await api.client.get("/auth/users", headers=frank)).status_code == 403
    assert (await api.client.get("/auth/me", headers=frank)).status_code == 200
    assert (await api.client.patch("/auth/users/frank", json={"disabled": True}, headers=admin)).status_code == 200
    disabled = await api.client.get("/auth/me", headers=frank)
    assert disabled.status_code == 401
    assert disabled.json()["detail"] == "This account is disabled."


async def test_the_last_enabled_admin_cannot_be_deleted_disabled_or_demoted(api: Api) -> None:
    admin = await api.admin()
    refusals = [
        api.client.delete("/auth/users/root-admin", headers=admin),
        api.client.patch("/auth/users/root-admin", json={"disabled": True}, headers=admin),
        api.client.patch("/auth/users/root-admin", json={"roles": []}, headers=admin),
        api.client.patch("/auth/users/root-admin", json={"roles": ["service"]}, headers=admin),
    ]
    for refusal in refusals:
        response = await refusal
        assert response.status_code == 409, response.text
        assert "last enabled account with the 'admin' role" in response.json()["detail"]
    assert (await api.client.patch("/auth/users/root-admin", json={"email": "a@b.c"}, headers=admin)).status_code == 200

    other = await create(api, admin, "grace", "admin")
    assert (await api.client.patch("/auth/users/grace", json={"disabled": True}, headers=admin)).status_code == 200
    assert (await api.client.delete("/auth/users/root-admin", headers=admin)).status_code == 409, "grace is disabled"
    assert (await api.client.patch("/auth/users/grace", json={"disabled": False}, headers=admin)).status_code == 200
    other = bearer((await api.login("grace"))["access_token"])
    assert (await api.client.delete("/auth/users/root-admin", headers=other)).status_code == 204
    assert (await api.client.delete("/auth/users/grace", headers=other)).status_code == 409


async def test_two_admins_deleting_each_other_at_once_leave_one(api: Api) -> None:
    survivor = ("root-admin", await api.admin())
    for round_ in range(4):
        name = f"admin{round_}"
        newcomer = (name, await create(api, survivor[1], name, "admin"))
        one, two = await asyncio.gather(
            api.client.delete(f"/auth/users/{newcomer[0]}", headers=survivor[1]),
            api.client.delete(f"/auth/users/{survivor[0]}", headers=newcomer[1]),
        )
        assert sorted([one.status_code, two.status_code]) in ([204, 401], [204, 409]), (one.text, two.text)
        survivor = survivor if one.status_code == 204 else newcomer
        users = (await api.client.get("/auth/users", headers=survivor[1])).json()["items"]
        assert [u["username"] for u in users if "admin" in u["roles"]] == [survivor[0]]


async def test_the_last_enabled_service_account_cannot_be_deleted_disabled_or_demoted(api: Api) -> None:
    admin = await api.admin()
    await create(api, admin, "depot-service", "service")
    for change in ({"disabled": True}, {"roles": []}, {"roles": ["admin"]}):
        response = await api.client.patch("/auth/users/depot-service", json=change, headers=admin)
        assert response.status_code == 409, response.text
        assert "last enabled account with the 'service' role" in response.json()["detail"]
    assert (await api.client.delete("/auth/users/depot-service", headers=admin)).status_code == 409
    both = await api.client.patch("/auth/users/depot-service", json={"roles": ["admin", "service"]}, headers=admin)
    assert both.status_code == 200
    await create(api, admin, "depot-service-2", "service")
    assert (await api.client.delete("/auth/users/depot-service", headers=admin)).status_code == 204
    last = await api.client.patch("/auth/users/depot-service-2", json={"disabled": True}, headers=admin)
    assert last.status_code == 409


async def test_services_read_any_user(api: Api) -> None:
    admin = await api.admin()
    service_account = await create(api, admin, "depot-service", "service")
    assert (await api.client.post("/auth/groups", json={"name": "ml-Team"}, headers=admin)).status_code == 201
    grace = await api.user("grace")
    assert (await api.client.put("/auth/groups/ml-Team/members/grace", headers=admin)).status_code == 204
    await api.register("heidi")
    assert (await api.client.patch("/auth/users/heidi", json={"disabled": True}, headers=admin)).status_code == 200

    read = await api.client.get("/auth/users/GRACE", headers=service_account)
    assert read.status_code == 200, read.text
    assert (read.json()["groups"], read.json()["roles"], read.json()["disabled"]) == (["ml-Team"], [], False)
    assert (await api.client.get("/auth/users/heidi", headers=service_account)).json()["disabled"] is True
    assert (await api.client.get("/auth/users/nobody", headers=service_account)).status_code == 404
    denied = await api.client.get("/auth/users/heidi", headers=grace)
    assert denied.status_code == 403
    assert (await api.client.get("/auth/users/depot-service", headers=grace)).status_code == 403
