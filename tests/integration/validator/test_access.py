"""`POST /validate` against what package_service really enforces, over the whole access matrix."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from tests.helpers import in_process, real_server
from tests.integration.validator.conftest import Depot
from validator_service.app import create_app
from validator_service.settings import ValidatorSettings

CALLERS = ("owner", "writer", "reader", "stranger", "admin", "service")
ACTIONS = ("read", "write", "admin")


async def enforced(depot: Depot, headers: dict[str, str], action: str) -> bool:
    """Whether package_service lets `headers` do `action` to package `pkg` (a harmless request of that kind)."""
    client = depot.packages
    if action == "read":
        response = await client.get("/packages/pkg", headers=headers)
    elif action == "write":
        response = await client.patch("/packages/pkg/versions/1.0.0", json={"description": "d"}, headers=headers)
    else:
        package = (await client.get("/packages/pkg", headers=depot.callers.admin)).json()
        response = await client.patch("/packages/pkg", json={"visibility": package["visibility"]}, headers=headers)
    assert response.status_code in {200, 403, 404}, response.text
    return response.status_code == 200


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
    await depot.upload("pkg", "1.0.0", b"bytes")
    disagreements = []
    for caller in CALLERS:
        headers = getattr(depot.callers, caller)
        for action in ACTIONS:
            expected = await enforced(depot, headers, action)
            # The caller asks about itself, and a service asks on the caller's behalf: both agree.
            mine = await depot.validator.post("/validate", json={"package": "pkg", "action": action}, headers=headers)
            on_behalf = await depot.validator.post(
                "/validate",
                json={"package": "PKG", "version": "1.0.0", "action": action, "subject": subject_of(depot, caller)},
                headers=depot.callers.service,
            )
            assert mine.status_code == on_behalf.status_code == 200, (mine.text, on_behalf.text)
            answers = (mine.json()["allowed"], on_behalf.json()["allowed"])
            if answers != (expected, expected):
                disagreements.append((caller, action, expected, answers))
            assert mine.json()["reason"]
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
    shouting = await ask(depot.callers.admin, {"username": "OLIVIA"})
    assert shouting.json() == {"allowed": True, "reason": "owner"}, "usernames are lowercase"


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
