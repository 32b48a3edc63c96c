"""Schemathesis against the three services, served by uvicorn on real PostgreSQL and S3: every
operation of each OpenAPI document, called with generated input (valid and not), as a real admin,
as an admin whose account does not exist (a signed token that outlived its user), and anonymously.
No answer may be a server error, and every answer must match the schema its document declares for
that status.

Bounded: `EXAMPLES` generated cases per operation and caller, derandomized, so that the suite's
time stays fixed and a failure can be replayed.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, strategies
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from structlog.testing import capture_logs

from auth_service.app import create_app as create_auth_app
from auth_service.cli import service_token
from devstack.tokens import TokenSigner
from package_service.app import create_app as create_package_app
from package_service.settings import PackageSettings
from tests.conftest import Servers
from tests.helpers import real_server, service_settings
from tests.integration.auth.conftest import ADMIN, auth_settings, wait_for_admin
from validator_service.app import create_app as create_validator_app
from validator_service.settings import ValidatorSettings

pytestmark = pytest.mark.slow

EXAMPLES = 12
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


Callers = dict[str, dict[str, str]]
Stack = tuple[Callers, dict[str, str]]


@pytest.fixture
async def stack(servers: Servers, database_url: str, bucket: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """The three services on real servers; who calls them, and where each prefix is served."""
    signer = TokenSigner()
    settings = auth_settings(database_url, tmp_path, auth_public_keys=signer.public_pem)
    token = await service_token(settings, "depot-service")
    async with real_server(create_auth_app(settings)) as auth_url:
        async with httpx.AsyncClient(base_url=auth_url) as client:
            await wait_for_admin(client)
            login = await client.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        callers = {
            "admin": {"Authorization": f"Bearer {login.json()['access_token']}"},
            "admin without an account": signer.headers("ada", roles=["admin"]),
            "anonymous": {},
        }
        jwks = f"{auth_url}/auth/.well-known/jwks.json"
        common = {"auth_public_keys": signer.public_pem, "auth_jwks_url": jwks}
        packages = PackageSettings(**service_settings(servers, database_url, bucket, **common))
        async with real_server(create_package_app(packages)) as packages_url:
            validator = ValidatorSettings(
                **service_settings(
                    servers, database_url, bucket, **common, auth_url=auth_url, packages_url=packages_url,
                    service_token=token, access_cache_seconds=0,
                )
            )  # fmt: skip
            async with real_server(create_validator_app(validator)) as validator_url:
                yield callers, {"/auth": auth_url, "/packages": packages_url, "/validate": validator_url}


def seed(urls: dict[str, str], admin: dict[str, str], name: str) -> dict[str, str]:
    """A user, a group and a package with a version, all called `name` (fresh for each operation,
    as names of deleted users and packages are never given again); the path values naming them."""
    with httpx.Client(headers=admin, timeout=30) as client:
        user = {"username": name, "password": "correct horse battery"}
        assert client.post(f"{urls['/auth']}/auth/users", json=user).status_code == 201
        assert client.post(f"{urls['/auth']}/auth/groups", json={"name": name}).status_code == 201
        put = client.put(f"{urls['/packages']}/packages/{name}/versions/1.0.0/content", content=b"fuzzed bytes")
        assert put.status_code == 201, put.text
    return {"username": name, "name": name, "package": name, "version": "1.0.0"}


def fuzz(urls: dict[str, str], prefix: str, callers: Callers) -> tuple[list[str], Counter[tuple[str, str, int]]]:
    """Run every operation of one document; the failures found (one line each), and the answers
    seen, counted by operation, caller and status."""
    base_url = urls[prefix]
    schema = schemathesis.openapi.from_url(f"{base_url}{prefix}/openapi.json")
    failures: list[str] = []
    answers: Counter[tuple[str, str, int]] = Counter()

    def explore(operation: Any, known: dict[str, str]) -> None:
        @SETTINGS
        @hypothesis.given(case=operation.as_strategy(), aimed=strategies.booleans())
        def run(case: schemathesis.Case[Any], aimed: bool) -> None:
            if aimed:  # at things that exist, so that generated bodies and queries reach the handlers
                case.path_parameters = {k: known.get(k, v) for k, v in (case.path_parameters or {}).items()}
            for who, headers in callers.items():
                response = case.call(base_url=base_url, headers=headers, timeout=60)
                answers[operation.label, who, response.status_code] += 1
                try:
                    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
                except FailureGroup as found:
                    kinds = ", ".join(sorted({failure.title for failure in found.exceptions}))
                    failures.append(f"{case.method} {case.formatted_path} ({who}) -> {response.status_code}: {kinds}")
                    return

        run()

    for number, result in enumerate(schema.get_all_operations()):
        if isinstance(result, Ok):
            explore(result.ok(), seed(urls, callers["admin"], f"fuzzed-{number}"))
        else:
            failures.append(f"{prefix}: an operation schemathesis cannot read: {result.err()}")
    return failures, answers


@pytest.mark.timeout(900)
@pytest.mark.parametrize("prefix", ["/auth", "/packages", "/validate"])
async def test_no_server_error_and_no_answer_outside_its_schema(stack: Stack, prefix: str) -> None:
    callers, urls = stack
    failures, answers = await asyncio.to_thread(fuzz, urls, prefix, callers)
    assert not failures, "\n".join(failures)
    # Not vacuous: every operation was called by every caller, and generated input got past
    # validation into the handlers (an admin's calls succeed on at least half of the operations).
    operations = {label for label, _, _ in answers}
    assert {(label, who) for label, who, _ in answers} == {(op, who) for op in operations for who in callers}
    succeeded = {label for label, who, status in answers if who == "admin" and status < 300}
    assert len(succeeded) >= len(operations) // 2, sorted(operations - succeeded)


@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_a_body_nested_beyond_reason_is_a_400_on_every_json_operation(stack: Stack, depth: int) -> None:
    """A parser's recursion is no server error: every operation that reads JSON refuses it plainly."""
    callers, urls = stack
    body = b"[" * depth + b"]" * depth
    operations = 0
    with capture_logs() as logs:
        async with httpx.AsyncClient(timeout=60) as client:
            for prefix, url in urls.items():
                document = (await client.get(f"{url}{prefix}/openapi.json")).json()
                for path, item in document["paths"].items():
                    for method, op in item.items():
                        if "application/json" not in op.get("requestBody", {}).get("content", {}):
                            continue
                        operations += 1
                        response = await client.request(
                            method.upper(), url + re.sub(r"{[^}]+}", "x", path), content=body,
                            headers={**callers["admin"], "Content-Type": "application/json"},
                        )  # fmt: skip
                        assert response.status_code == 400, (method, path, response.text)
                        assert response.headers["content-type"] == "application/problem+json"
                        assert "nested too deeply" in response.json()["detail"], (method, path)
    assert operations >= 15, "every service's JSON operations were tried, /auth/login among them"
    assert [line for line in logs if line.get("log_level") in {"error", "critical"}] == []
