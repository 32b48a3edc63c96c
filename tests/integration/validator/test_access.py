"""`POST /validate` against what package_service really enforces, over the whole access matrix."""

from __future__ import annotations

import itertools
import json
import pickle
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from tests.helpers import in_process, real_server
from tests.integration.validator.conftest import Depot, zip_of
from validator_service.app import create_app
from validator_service.settings import ValidatorSettings

CALLERS = ("owner", "writer", "reader", "stranger", "admin", "service")
ACTIONS = ("read", "write", "admin")
HIDDEN = {"allowed": False, "reason": "no such package"}
# Versions of `pkg` in every state (`versions_in_every_state`), and what downloads ask for:
# no version (`latest`: 1.0.0), `latest` by name, each state by exact version, and none at all.
STATES = {"1.0.0": "available", "2.0.0": "rejected", "3.0.0": "yanked", "4.0.0": "pending"}
DOWNLOADS = (None, "latest", *STATES, "9.9.9")


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os  # noqa: PLC0415 - only the pickle's reference matters; nothing here runs it

        return (os.system, ("echo pwned",))


async def versions_in_every_state(depot: Depot, name: str) -> None:
    """`name` with versions as in `STATES`: validated for real, yanked by its owner, one left pending."""
    await depot.upload(name, "1.0.0", zip_of({"a.txt": b"a"}), filename="a.zip")
    await depot.upload(name, "2.0.0", pickle.dumps(Boom(), protocol=4), filename="model.pkl")
    await depot.upload(name, "3.0.0", zip_of({"b.txt": b"b"}), filename="b.zip")
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        await depot.decided(name, version)
    yank = await depot.packages.post(
        f"/packages/{name}/versions/3.0.0/yank", json={"reason": "superseded"}, headers=depot.callers.owner
    )
    assert yank.status_code == 200, yank.text
    await depot.validator_app.state.validation.worker.stop()  # nothing decides 4.0.0 from now on
    await depot.upload(name, "4.0.0", zip_of({"c.txt": b"c"}), filename="c.zip")
    for version, state in STATES.items():
        assert (await depot.version(name, version))["status"] == state, version


async def enforced(depot: Depot, headers: dict[str, str], action: str, version: str | None = None) -> tuple[bool, str]:
    """What package_service does when `headers` do `action` to package `pkg` (a harmless request of that kind):
    whether it lets them, and for a refusal the reason `POST /validate` must give (an allowed one: "")."""
    client = depot.packages
    if action == "read":
        response = await client.get("/packages/pkg", headers=headers)
    elif action == "download":
        response = await client.get(f"/packages/pkg/versions/{version or 'latest'}/content", headers=headers)
    elif action == "write":
        response = await client.patch("/packages/pkg/versions/1.0.0", json={"description": "d"}, headers=headers)
    else:
        package = (await client.get("/packages/pkg", headers=depot.callers.admin)).json()
        response = await client.patch("/packages/pkg", json={"visibility": package["visibility"]}, headers=headers)
    assert response.status_code in {200, 403, 404, 409}, response.text
    if response.status_code == 404:  # "No such package." or "No such version."
        return False, response.json()["detail"].rstrip(".").lower()
    if response.status_code == 409:  # a download of a version not yet (or never) downloadable
        return False, f"version is {STATES[str(version)]}"
    return response.status_code == 200, ""


def subject_of(depot: Depot, caller: str) -> dict[str, Any]:
    claims = {
        "owner": ("olivia", [], []), "writer": ("wendy", ["writers"], []), "reader": ("rita", ["readers"], []),
        "stranger": ("sam", ["Writers"], []), "admin": ("ada", [], ["admin"]),
        "service": ("depot-service", [], ["service"]),
    }[caller]  # fmt: skip
    return {"username": claims[0], "groups": claims[1], "roles": claims[2]}


@pytest.mark.parametrize("visibility", ["private", "public"])
async def test_decisions_agree_with_package_service_for_every_caller_and_action(depot: Depot, visibility: str) -> None:
    await depot.create("pkg", visibility=visibility, read_groups=["readers"], write_groups=["writers"])
    await versions_in_every_state(depot, "pkg")
    questions = [(action, None) for action in ACTIONS] + [("download", version) for version in DOWNLOADS]
    disagreements = []
    for caller in CALLERS:
        headers = getattr(depot.callers, caller)
        for action, version in questions:
            allowed, reason = await enforced(depot, headers, action, version)
            # The caller asks about itself, and a service asks on the caller's behalf (about an existing
            # version for the actions on the package): both agree.
            asked = {"package": "pkg", "action": action, **({"version": version} if version else {})}
            mine = await depot.validator.post("/validate", json=asked, headers=headers)
            named = {"version": "1.0.0"} if action in ACTIONS else {}
            named |= asked | {"package": "PKG", "subject": subject_of(depot, caller)}
            on_behalf = await depot.validator.post("/validate", json=named, headers=depot.callers.service)
            assert mine.status_code == on_behalf.status_code == 200, (mine.text, on_behalf.text)
            answers = [mine.json(), on_behalf.json()]
            if any(answer["allowed"] != allowed or (reason and answer["reason"] != reason) for answer in answers):
                disagreements.append((caller, action, version, (allowed, reason), answers))
            assert all(answer["reason"] for answer in answers)
    assert disagreements == []


async def test_the_reason_names_the_rule(depot: Depot) -> None:
    await depot.create("pkg", read_groups=["readers"], write_groups=["writers"])
    cases = {
        ("owner", "admin"): (True, "owner"),
        ("writer", "write"): (True, "member of write group 'writers'"),
        ("reader", "write"): (False, "not allowed to write"),
        ("stranger", "read"): (False, "no such package"),
        ("admin", "admin"): (True, "admin"),
    }
    for (caller, action), expected in cases.items():
        response = await depot.validator.post(
            "/validate", json={"package": "pkg", "action": action}, headers=getattr(depot.callers, caller)
        )
        assert (response.json()["allowed"], response.json()["reason"]) == expected


async def test_no_answer_reveals_that_a_private_package_exists(depot: Depot) -> None:
    await depot.create("secret", read_groups=["readers"], write_groups=["writers"])
    await depot.upload("secret", "1.0.0", zip_of({"a.txt": b"a"}), filename="a.zip")
    assert (await depot.decided("secret", "1.0.0"))["status"] == "available"
    sam = subject_of(depot, "stranger")
    for action in ("read", "download", "write", "admin"):
        for version in (None, "1.0.0", "9.9.9", "latest", "not-semver"):
            for package in ("secret", "Secret", "no-such-package"):
                body = {"package": package, "action": action, **({"version": version} if version else {})}
                mine = await depot.validator.post("/validate", json=body, headers=depot.callers.stranger)
                on_behalf = await depot.validator.post(
                    "/validate", json={**body, "subject": sam}, headers=depot.callers.service
                )
                assert mine.status_code == on_behalf.status_code == 200, (mine.text, on_behalf.text)
                assert mine.json() == on_behalf.json() == HIDDEN, (package, action, version)

    # One who may read learns nothing new from the real reason, nor from which versions exist.
    async def ask(action: str, version: str | None) -> tuple[bool, str]:
        body = {"package": "secret", "action": action, **({"version": version} if version else {})}
        answer = (await depot.validator.post("/validate", json=body, headers=depot.callers.reader)).json()
        return answer["allowed"], answer["reason"]

    assert await ask("write", None) == (False, "not allowed to write")
    assert await ask("admin", "1.0.0") == (False, "only the owner or an admin")
    assert await ask("write", "9.9.9") == (False, "not allowed to write"), "as package_service: 403 before 404"
    assert await ask("read", "9.9.9") == (False, "no such version")
    assert await ask("download", "9.9.9") == (False, "no such version")
    assert await ask("read", "1.0.0") == (True, "member of read group 'readers'")


async def test_a_download_is_read_plus_the_version_state(depot: Depot) -> None:
    await depot.create("pkg", read_groups=["readers"])
    await versions_in_every_state(depot, "pkg")

    async def ask(headers: dict[str, str], version: str | None = None, **body: Any) -> dict[str, Any]:
        asked = {"package": "pkg", "action": "download", **({"version": version} if version else {}), **body}
        response = await depot.validator.post("/validate", json=asked, headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    reader = depot.callers.reader
    readers = {"allowed": True, "reason": "member of read group 'readers'"}
    assert await ask(reader, "1.0.0") == readers
    assert await ask(reader, "v3.0.0+build.1") == readers, "a yanked version named exactly"
    assert await ask(reader, "2.0.0") == {"allowed": False, "reason": "version is rejected"}
    assert await ask(reader, "4.0.0") == {"allowed": False, "reason": "version is pending"}
    assert await ask(depot.callers.owner, "4.0.0") == {"allowed": False, "reason": "version is pending"}
    for version in STATES:
        assert await ask(depot.callers.admin, version) == {"allowed": True, "reason": "admin"}
    assert await ask(reader) == await ask(reader, "latest") == readers, "no version: `latest`, which is 1.0.0"
    assert await ask(depot.callers.stranger, "1.0.0") == HIDDEN

    # `latest` never stands for a yanked version: with none available, there is nothing to download.
    yank = await depot.packages.post(
        "/packages/pkg/versions/1.0.0/yank", json={"reason": "bad"}, headers=depot.callers.owner
    )
    assert yank.status_code == 200, yank.text
    for version in (None, "latest"):
        assert await ask(reader, version) == {"allowed": False, "reason": "no such version"}
        assert await ask(depot.callers.admin, version) == {"allowed": False, "reason": "no such version"}
    assert await ask(reader, "1.0.0") == readers
    latest = await depot.packages.get("/packages/pkg/versions/latest/content", headers=reader)
    assert latest.status_code == 404, "as package_service answers"
    document = (await depot.validator.get("/validate/openapi.json")).json()
    assert document["components"]["schemas"]["ValidateRequest"]["properties"]["action"]["enum"] == [
        "read", "download", "write", "admin",
    ]  # fmt: skip


async def test_unknown_packages_and_versions_are_not_allowed(depot: Depot) -> None:
    await depot.create("pkg", visibility="public")
    await depot.upload("pkg", "1.0.0", b"bytes")
    headers = depot.callers.reader

    async def ask(**body: Any) -> dict[str, Any]:
        response = await depot.validator.post("/validate", json={"action": "read", **body}, headers=headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    assert await ask(package="nope") == {"allowed": False, "reason": "no such package"}
    for hostile in ("../auth", "a/b", "pkg%2F..", "\u212aelvin", "x" * 200, "pkg\x00"):
        assert (await ask(package=hostile))["allowed"] is False
    assert await ask(package="pkg", version="9.9.9") == {"allowed": False, "reason": "no such version"}
    assert await ask(package="pkg", version="not-semver") == {"allowed": False, "reason": "no such version"}
    assert (await ask(package="pkg", version="v1.0.0+build.7"))["allowed"] is True
    assert (await ask(package="P.K.G"))["allowed"] is False, "a different normalized name is a different package"


async def test_only_admins_and_services_may_ask_about_someone_else(depot: Depot) -> None:
    await depot.create("pkg", read_groups=["readers"])
    other = {"username": "rita", "groups": ["readers"], "roles": []}

    async def ask(headers: dict[str, str], subject: dict[str, Any]) -> httpx.Response:
        body = {"package": "pkg", "action": "read", "subject": subject}
        return await depot.validator.post("/validate", json=body, headers=headers)

    refused = await ask(depot.callers.stranger, other)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    # Claiming a group one does not hold is asking about someone else.
    assert (await ask(depot.callers.stranger, {"username": "sam", "groups": ["readers"]})).status_code == 403
    itself = await ask(depot.callers.reader, other)
    assert (itself.status_code, itself.json()["allowed"]) == (200, True)
    for privileged in (depot.callers.admin, depot.callers.service):
        response = await ask(privileged, other)
        assert (response.status_code, response.json()["allowed"]) == (200, True)
    await depot.add_user("olivia")
    shouting = await ask(depot.callers.admin, {"username": "OLIVIA"})
    assert shouting.json() == {"allowed": True, "reason": "owner"}, "usernames are lowercase"
    # By username alone, a caller may ask about itself only: as its token says, with nothing looked up.
    assert (await ask(depot.callers.stranger, {"username": "rita"})).status_code == 403
    assert (await ask(depot.callers.stranger, {"username": "no-such-user"})).status_code == 403
    itself = await ask(depot.callers.reader, {"username": "Rita"})
    assert itself.json() == {"allowed": True, "reason": "member of read group 'readers'"}


async def test_a_subject_named_by_username_alone_has_its_current_groups_and_roles(depot: Depot) -> None:
    await depot.create("pkg", read_groups=["readers"], write_groups=["writers"])
    await depot.add_user("bob", groups=("readers",))
    await depot.add_user("boss", roles=("admin",))

    async def ask(subject: dict[str, Any], action: str = "read", headers: dict[str, str] | None = None) -> Any:
        body = {"package": "pkg", "action": action, "subject": subject}
        response = await depot.validator.post("/validate", json=body, headers=headers or depot.callers.admin)
        assert response.status_code == 200, response.text
        return response.json()

    reader = {"allowed": True, "reason": "member of read group 'readers'"}
    for privileged in (depot.callers.admin, depot.callers.service):
        assert await ask({"username": "bob"}, headers=privileged) == reader
        no_write = await ask({"username": "BOB"}, "write", privileged)
        assert no_write == {"allowed": False, "reason": "not allowed to write"}
        assert await ask({"username": "boss"}, "admin", privileged) == {"allowed": True, "reason": "admin"}
    # Groups or roles given are taken as given (one left out is empty), whoever the user is.
    assert await ask({"username": "bob", "groups": []}) == HIDDEN
    assert await ask({"username": "bob", "roles": []}) == HIDDEN
    assert await ask({"username": "boss", "roles": []}, "admin") == HIDDEN
    assert (await ask({"username": "nobody", "groups": ["writers"]}, "write"))["allowed"] is True

    # A change of groups shows at once (this validator caches nothing).
    admin = await depot.auth_admin()
    moved = [
        await depot.auth.delete("/auth/groups/readers/members/bob", headers=admin),
        await depot.auth.post("/auth/groups", json={"name": "writers"}, headers=admin),
        await depot.auth.put("/auth/groups/writers/members/bob", headers=admin),
    ]
    assert [response.status_code for response in moved] == [204, 201, 204]
    assert await ask({"username": "bob"}, "write") == {"allowed": True, "reason": "member of write group 'writers'"}
    assert (await depot.auth.delete("/auth/groups/writers/members/bob", headers=admin)).status_code == 204
    assert await ask({"username": "bob"}) == HIDDEN


async def test_an_unknown_or_disabled_user_is_allowed_nothing(depot: Depot) -> None:
    await depot.create("pkg", visibility="public")
    await depot.upload("pkg", "1.0.0", zip_of({"a.txt": b"a"}), filename="a.zip")
    await depot.add_user("carol", roles=("admin",))
    await depot.add_user("dave")
    admin = await depot.auth_admin()
    disabled = await depot.auth.patch("/auth/users/carol", json={"disabled": True}, headers=admin)
    assert disabled.status_code == 200, disabled.text
    assert (await depot.auth.delete("/auth/users/dave", headers=admin)).status_code == 204

    async def ask(headers: dict[str, str], package: str, action: str, username: str) -> Any:
        body = {"package": package, "action": action, "subject": {"username": username}}
        response = await depot.validator.post("/validate", json=body, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    # Only admins and services may name others: telling them a user does not exist tells them what
    # `GET /auth/users/{username}` would.
    unknown = {"allowed": False, "reason": "no such user"}
    for headers, package, action in itertools.product(
        (depot.callers.admin, depot.callers.service), ("pkg", "no-such-package"), ("read", "download", "write", "admin")
    ):
        for nobody in ("nobody", "dave", "x", "../auth/users", "a/b", ".", "Not A Name"):
            assert await ask(headers, package, action, nobody) == unknown, (nobody, action)
        disabled_admin = await ask(headers, package, action, "carol")
        assert disabled_admin == {"allowed": False, "reason": "user is disabled"}


async def test_bad_requests(depot: Depot) -> None:
    validator = depot.validator
    assert (await validator.post("/validate", json={"package": "pkg", "action": "read"})).status_code == 401
    for body in (
        {"package": "pkg", "action": "delete"},
        {"package": "pkg"},
        {"package": "pkg", "action": "read", "extra": 1},
        {"package": "", "action": "read"},
        {"package": "pkg", "action": "read", "subject": {"groups": []}},
    ):
        response = await validator.post("/validate", json=body, headers=depot.callers.owner)
        assert response.status_code == 400, body
        assert response.json()["errors"]
    assert (await validator.post("/validate", content=b"{", headers=depot.callers.owner)).status_code == 400


async def test_a_changed_access_list_is_seen_at_once_without_a_cache(depot: Depot) -> None:
    await depot.create("pkg")
    body = {"package": "pkg", "action": "read"}
    before = await depot.validator.post("/validate", json=body, headers=depot.callers.stranger)
    assert before.json()["allowed"] is False
    changed = await depot.packages.patch("/packages/pkg", json={"visibility": "public"}, headers=depot.callers.owner)
    assert changed.status_code == 200
    after = await depot.validator.post("/validate", json=body, headers=depot.callers.stranger)
    assert after.json() == {"allowed": True, "reason": "public package"}


async def test_package_service_down_is_a_503(depot: Depot) -> None:
    # Nothing listens on the discard port.
    settings = ValidatorSettings(**(depot.validator_settings | {"packages_url": "http://127.0.0.1:9"}))
    async with in_process(create_app(settings)) as validator:
        body = {"package": "pkg", "action": "read"}
        response = await validator.post("/validate", json=body, headers=depot.callers.owner)
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "127.0.0.1" not in response.text


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"package": "pkg", "owner": "s3cr3t"}, "visibility: missing"),
        ({"package": "pkg", "owner": "olivia", "visibility": "s3cr3t", "read_groups": [], "write_groups": [],
          "version": None}, "visibility: literal_error"),
        ("s3cr3t", "(message): model_type"),
    ],
)  # fmt: skip
async def test_a_malformed_access_answer_is_a_503_and_logged(depot: Depot, answer: Any, problem: str) -> None:
    async def access(_: Request) -> Response:
        return Response(json.dumps(answer), media_type="application/json")

    broken = Starlette(routes=[Route("/packages/{name}/access", access)])
    async with real_server(broken) as packages_url:
        validator = create_app(ValidatorSettings(**(depot.validator_settings | {"packages_url": packages_url})))
        async with in_process(validator) as client:
            with capture_logs() as logs:
                body = {"package": "pkg", "action": "read"}
                response = await client.post("/validate", json=body, headers=depot.callers.owner)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "package_service's answer to the access query was malformed."
    [line] = [entry for entry in logs if entry["event"] == "package_service_answer_invalid"]
    assert problem in line["problems"]
    assert "s3cr3t" not in json.dumps(logs, default=str)


def stub_auth(users: Any) -> Starlette:
    """An auth_service that grants the service token and answers `GET /auth/users/{name}` with `users`."""

    async def token(_: Request) -> Response:
        granted = {"access_token": "stub", "token_type": "Bearer", "expires_in": 900}
        return Response(json.dumps(granted), media_type="application/json")

    return Starlette(routes=[Route("/auth/token", token, methods=["POST"]), Route("/auth/users/{name}", users)])


async def test_auth_service_down_or_refusing_is_a_503_never_a_500(depot: Depot) -> None:
    async def refused(_: Request) -> Response:  # as auth_service answered before services could read users
        return Response(json.dumps({"status": 403}), status_code=403, media_type="application/problem+json")

    async def failing(_: Request) -> Response:
        return Response("oops", status_code=500)

    async def malformed(_: Request) -> Response:
        return Response(json.dumps({"username": "bob", "groups": "s3cr3t"}), media_type="application/json")

    body = {"package": "pkg", "action": "read", "subject": {"username": "bob"}}
    for users, detail in (
        (refused, "auth_service did not answer the user query."),
        (failing, "auth_service did not answer the user query."),
        (malformed, "auth_service's answer to the user query was malformed."),
    ):
        async with real_server(stub_auth(users)) as auth_url:
            validator = create_app(ValidatorSettings(**(depot.validator_settings | {"auth_url": auth_url})))
            async with in_process(validator) as client:
                with capture_logs() as logs:
                    response = await client.post("/validate", json=body, headers=depot.callers.service)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == detail
        assert "s3cr3t" not in json.dumps(logs, default=str)
    [line] = [entry for entry in logs if entry["event"] == "auth_service_answer_invalid"]
    assert "groups: list_type" in line["problems"]
    # Nothing listens on the discard port.
    settings = ValidatorSettings(**(depot.validator_settings | {"auth_url": "http://127.0.0.1:9"}))
    async with in_process(create_app(settings)) as client:
        response = await client.post("/validate", json=body, headers=depot.callers.admin)
    assert response.status_code == 503, response.text
    assert "127.0.0.1" not in response.text


async def test_users_are_cached_briefly_like_access_lists(depot: Depot) -> None:
    await depot.create("pkg", read_groups=["readers"])
    await depot.add_user("bob", groups=("readers",))
    admin = await depot.auth_admin()
    body = {"package": "pkg", "action": "read", "subject": {"username": "bob"}}
    cached = ValidatorSettings(**(depot.validator_settings | {"access_cache_seconds": 10}))
    async with in_process(create_app(cached)) as client:
        assert (await client.post("/validate", json=body, headers=depot.callers.service)).json()["allowed"] is True
        left = await depot.auth.delete("/auth/groups/readers/members/bob", headers=admin)
        assert left.status_code == 204
        again = await client.post("/validate", json=body, headers=depot.callers.service)
        assert again.json()["allowed"] is True, "within access_cache_seconds, the answer read before"
    assert (await depot.validator.post("/validate", json=body, headers=depot.callers.service)).json() == HIDDEN
