"""Admin calls racing deletes, and statements that fail: a `404`, `401` or `409`, never a `500`,
and never a logged value."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

import asyncpg
import httpx
import pytest

from tests.integration.auth.conftest import Api, bearer

WAITING_FOR_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
)


def raw(database_url: str) -> str:
    return database_url.replace("+asyncpg", "")


async def answer_while_deleted(database_url: str, delete: str, request: Awaitable[httpx.Response]) -> httpx.Response:
    """`request`'s answer when `delete` commits while the request waits for the rows it deletes.

    The request reads the row before the delete commits, then writes a row that refers to it:
    its foreign key waits for the delete's transaction, and fails when that commits.
    """
    deleting = await asyncpg.connect(raw(database_url))
    watching = await asyncpg.connect(raw(database_url))
    try:
        transaction = deleting.transaction()
        await transaction.start()
        assert await deleting.execute(delete) == "DELETE 1"
        answer = asyncio.ensure_future(request)
        async with asyncio.timeout(10):
            while not answer.done():
                if await watching.fetchval(WAITING_FOR_A_LOCK):
                    break
                await asyncio.sleep(0.01)
        assert not answer.done(), "the request should wait for the deleting transaction"
        await transaction.commit()
        return await answer
    finally:
        await deleting.close()
        await watching.close()


async def test_adding_a_member_to_a_group_being_deleted_is_404(api: Api, database_url: str) -> None:
    admin = await api.admin()
    assert (await api.client.post("/auth/groups", json={"name": "doomed"}, headers=admin)).status_code == 201
    await api.register("liam")
    response = await answer_while_deleted(
        database_url,
        "DELETE FROM auth.groups WHERE name = 'doomed'",
        api.client.put("/auth/groups/doomed/members/liam", headers=admin),
    )
    assert response.status_code == 404, response.text
    assert response.json()["detail"] == "The group 'doomed' or the user 'liam' was deleted meanwhile."


async def test_adding_a_user_being_deleted_to_a_group_is_404(api: Api, database_url: str) -> None:
    admin = await api.admin()
    assert (await api.client.post("/auth/groups", json={"name": "staff"}, headers=admin)).status_code == 201
    await api.register("mona")
    response = await answer_while_deleted(
        database_url,
        "DELETE FROM auth.users WHERE username = 'mona'",
        api.client.put("/auth/groups/staff/members/MONA", headers=admin),
    )
    assert response.status_code == 404, response.text


async def test_creating_a_user_in_a_group_being_deleted_is_404_and_creates_nothing(api: Api, database_url: str) -> None:
    admin = await api.admin()
    for name in ("kept", "doomed"):
        assert (await api.client.post("/auth/groups", json={"name": name}, headers=admin)).status_code == 201
    body = {"username": "nina", "password": "password1", "groups": ["kept", "doomed"]}
    response = await answer_while_deleted(
        database_url,
        "DELETE FROM auth.groups WHERE name = 'doomed'",
        api.client.post("/auth/users", json=body, headers=admin),
    )
    assert response.status_code == 404, response.text
    assert "deleted meanwhile" in response.json()["detail"]
    assert (await api.client.get("/auth/users/nina", headers=admin)).status_code == 404
    assert (await api.register("nina"))["groups"] == [], "the name was not spent by the failed creation"


async def test_an_api_token_for_a_user_being_deleted_is_401(api: Api, database_url: str) -> None:
    owner = await api.user("omar")
    response = await answer_while_deleted(
        database_url,
        "DELETE FROM auth.users WHERE username = 'omar'",
        api.client.post("/auth/api-tokens", json={"name": "ci"}, headers=owner),
    )
    assert response.status_code == 401, response.text


async def test_a_login_of_a_user_being_deleted_is_401(api: Api, database_url: str) -> None:
    await api.register("pia")
    response = await answer_while_deleted(
        database_url,
        "DELETE FROM auth.users WHERE username = 'pia'",
        api.client.post("/auth/login", json={"username": "pia", "password": "correct horse battery"}),
    )
    assert response.status_code == 401, response.text


async def test_deleting_or_disabling_users_while_they_use_their_tokens_never_fails(api: Api) -> None:
    admin = await api.admin()
    for round_ in range(12):
        name = f"racer{round_}"
        await api.register(name)
        pairs = [await api.login(name) for _ in range(3)]
        change = (
            api.client.delete(f"/auth/users/{name}", headers=admin)
            if round_ % 2
            else api.client.patch(f"/auth/users/{name}", json={"disabled": True}, headers=admin)
        )
        headers = bearer(pairs[0]["access_token"])
        responses = await asyncio.gather(
            *(api.client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}) for pair in pairs),
            api.client.post("/auth/login", json={"username": name, "password": "correct horse battery"}),
            api.client.post("/auth/api-tokens", json={"name": "ci"}, headers=headers),
            change,
        )
        statuses = [response.status_code for response in responses]
        assert statuses[-1] in (200, 204), responses[-1].text
        assert all(status in (200, 201, 401) for status in statuses[:-1]), [r.text for r in responses]
        for response in responses[: len(pairs)]:
            if response.status_code == 200:  # a refresh that won the race does not outlive the change
                again = await api.client.post("/auth/refresh", json={"refresh_token": response.json()["refresh_token"]})
                assert again.status_code == 401


@pytest.mark.parametrize(
    "constraint",
    [
        "CREATE UNIQUE INDEX api_tokens_one_name ON auth.api_tokens (name)",
        "ALTER TABLE auth.api_tokens ADD CONSTRAINT api_tokens_no_twice CHECK (name NOT LIKE '%-twice')",
    ],
    ids=["unique_violation", "check_violation"],
)
async def test_a_failed_insert_logs_none_of_its_values(
    api: Api, database_url: str, capsys: pytest.CaptureFixture[str], constraint: str
) -> None:
    owner = await api.user("quinn")
    user_id = (await api.client.get("/auth/me", headers=owner)).json()["id"]
    name = f"secret-{uuid.uuid4().hex}"
    assert (await api.client.post("/auth/api-tokens", json={"name": name}, headers=owner)).status_code == 201
    connection = await asyncpg.connect(raw(database_url))
    try:  # a constraint that no flow expects: the insert fails as a bug would make it fail
        await connection.execute(constraint)
    finally:
        await connection.close()
    capsys.readouterr()
    failed = await api.client.post("/auth/api-tokens", json={"name": f"{name}-twice"}, headers=owner)
    again = await api.client.post("/auth/api-tokens", json={"name": name}, headers=owner)
    logged = capsys.readouterr().err
    assert 500 in (failed.status_code, again.status_code)
    assert "request_failed" in logged
    assert "Violation" in logged, "the error is logged, with its type and traceback"
    assert "parameters hidden" in logged
    for value in (name, user_id, "Failing row", "Key ("):
        assert value not in logged
