"""The three services against the HTTP contract (API.md): their OpenAPI documents are valid, list
every operation of the contract and no other, mark each one that needs a caller, and every such
operation answers `401` to an anonymous caller whatever its body, path or query hold.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette

from auth_service.app import create_app as create_auth_app
from auth_service.settings import AuthSettings
from common.settings import CommonSettings
from devstack.tokens import TokenSigner
from package_service.app import create_app as create_package_app
from package_service.settings import PackageSettings
from tests.conftest import Servers
from tests.helpers import in_process, service_settings
from validator_service.app import create_app as create_validator_app
from validator_service.settings import ValidatorSettings

API_MD = Path(__file__).resolve().parents[3] / "shared" / "docs" / "API.md"

# API.md's tables, as (method, path, who may call): "anyone" needs no token. Checked against
# API.md itself below whenever it is at hand (next to the repository, as on the machines here).
CONTRACT: set[tuple[str, str, str]] = {
    ("POST", "/auth/register", "anyone"), ("POST", "/auth/login", "anyone"), ("POST", "/auth/refresh", "anyone"),
    ("POST", "/auth/logout", "anyone"), ("GET", "/auth/me", "user"), ("PUT", "/auth/me/password", "user"),
    ("POST", "/auth/api-tokens", "user"), ("GET", "/auth/api-tokens", "user"),
    ("DELETE", "/auth/api-tokens/{id}", "user"), ("POST", "/auth/token", "anyone"), ("GET", "/auth/users", "admin"),
    ("POST", "/auth/users", "admin"), ("GET", "/auth/users/{username}", "user"),
    ("PATCH", "/auth/users/{username}", "admin"), ("DELETE", "/auth/users/{username}", "admin"),
    ("GET", "/auth/groups", "user"), ("POST", "/auth/groups", "admin"), ("DELETE", "/auth/groups/{name}", "admin"),
    ("PUT", "/auth/groups/{name}/members/{username}", "admin"),
    ("DELETE", "/auth/groups/{name}/members/{username}", "admin"), ("GET", "/auth/.well-known/jwks.json", "anyone"),
    ("POST", "/packages", "user"), ("GET", "/packages", "user"), ("GET", "/packages/{name}", "user"),
    ("PATCH", "/packages/{name}", "user"), ("DELETE", "/packages/{name}", "user"),
    ("GET", "/packages/{name}/versions", "user"), ("GET", "/packages/{name}/versions/{version}", "user"),
    ("PATCH", "/packages/{name}/versions/{version}", "user"),
    ("PUT", "/packages/{name}/versions/{version}/content", "user"),
    ("POST", "/packages/{name}/versions/{version}/uploads", "user"),
    ("GET", "/packages/{name}/versions/{version}/uploads/{upload_id}", "user"),
    ("POST", "/packages/{name}/versions/{version}/uploads/{upload_id}/complete", "user"),
    ("DELETE", "/packages/{name}/versions/{version}/uploads/{upload_id}", "user"),
    ("GET", "/packages/{name}/versions/{version}/content", "user"),
    ("POST", "/packages/{name}/versions/{version}/yank", "user"),
    ("POST", "/packages/{name}/versions/{version}/unyank", "user"),
    ("DELETE", "/packages/{name}/versions/{version}", "user"),
    ("POST", "/validate", "user"), ("GET", "/validate/reports/{package}/{version}", "user"),
    ("POST", "/validate/reports/{package}/{version}/rerun", "admin"), ("GET", "/validate/rules", "user"),
    ("PUT", "/validate/rules", "admin"),
}  # fmt: skip
ANYONE = {"anyone", "anyone, while open registration is on (default on)", "holder", "holder of an API token"}
ADMIN = {"admin"}
STANDARD = {"/health", "/health/ready"}  # API.md section 1: every service has them

SERVICES: list[tuple[str, Callable[..., Starlette], type[CommonSettings]]] = [
    ("/auth", create_auth_app, AuthSettings),
    ("/packages", create_package_app, PackageSettings),
    ("/validate", create_validator_app, ValidatorSettings),
]


def _who(cell: str, section: str) -> str:
    """The contract's "who" of an operation, reduced to anyone / user / admin."""
    cell = cell.strip()
    if section == "3":  # every package operation needs a caller; the rest is decided per package
        return "user"
    if cell in ANYONE:
        return "anyone"
    return "admin" if cell in ADMIN else "user"


def contract_of(text: str) -> set[tuple[str, str, str]]:
    """The operations of API.md's tables: method, path, who may call."""
    found = set()
    section = ""
    for line in text.splitlines():
        heading = re.match(r"## (\d)\.", line)
        if heading:
            section = heading.group(1)
        row = re.match(r"\| `(GET|POST|PUT|PATCH|DELETE) ([^`]+)` \|([^|]*)\|", line)
        if row and section in {"2", "3", "4"}:
            found.add((row.group(1), row.group(2), _who(row.group(3), section)))
    return found


@pytest.mark.skipif(not API_MD.exists(), reason="API.md is not beside the repository")
def test_the_operation_table_here_is_api_md_s() -> None:
    assert contract_of(API_MD.read_text()) == CONTRACT


def settings_for(
    settings_class: type[CommonSettings], servers: Servers, database_url: str, bucket: str
) -> CommonSettings:
    # A key the services trust: a well-formed but forged token is then refused, not unverifiable.
    return settings_class(**service_settings(servers, database_url, bucket, auth_public_keys=TokenSigner().public_pem))


@pytest.fixture
async def documents(servers: Servers, database_url: str, bucket: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for prefix, factory, settings_class in SERVICES:
        async with in_process(factory(settings_for(settings_class, servers, database_url, bucket))) as client:
            found[prefix] = (await client.get(f"{prefix}/openapi.json")).json()
    return found


def operations_of(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in document["paths"].items() for method, op in item.items()}


def _normalized(path: str) -> str:
    # API.md names the API token's id `{id}`; the route calls it `{token_id}`.
    return path.replace("{token_id}", "{id}")


async def test_the_documents_are_valid_openapi_with_every_operation_of_the_contract(
    documents: dict[str, Any],
) -> None:
    documented: set[tuple[str, str, str]] = set()
    for prefix, document in documents.items():
        validate(document)  # OpenAPI 3.1, by openapi-spec-validator
        for (method, path), op in operations_of(document).items():
            assert op["operationId"] == re.sub(r"[^a-z_]", "", op["operationId"]), op["operationId"]
            if path.removeprefix(prefix) in STANDARD or "internal" in op.get("tags", []):
                continue
            who = "anyone" if "security" not in op else "admin" if op.get("description") == "Admins only." else "user"
            documented.add((method, _normalized(path), who))
    assert documented == CONTRACT


async def test_protected_operations_document_their_security_and_statuses(documents: dict[str, Any]) -> None:
    for document in documents.values():
        assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        for (method, path), op in operations_of(document).items():
            if "security" in op:
                assert op["security"] == [{"bearer": []}], (method, path)
                assert "401" in op["responses"], (method, path)
                if op.get("description", "").endswith("only."):
                    assert "403" in op["responses"], (method, path)
            assert "503" in op["responses"], (method, path)
    packages = operations_of(documents["/packages"])
    content = "/packages/{name}/versions/{version}/content"
    upload = packages[("PUT", content)]
    assert {p["name"] for p in upload["parameters"] if p["in"] == "header"} == {
        "X-Checksum-Sha256", "X-Filename", "Content-Type",
    }  # fmt: skip
    download = packages[("GET", content)]
    assert {p["name"] for p in download["parameters"] if p["in"] == "header"} == {"Range", "If-None-Match"}
    assert {"200", "206", "304", "307", "404", "409", "416"} <= set(download["responses"])


async def test_every_protected_operation_answers_401_to_anonymous_callers_whatever_they_send(
    servers: Servers, database_url: str, bucket: str
) -> None:
    bodies: list[dict[str, Any]] = [
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"json": {"unknown": "field", "name": ["not", "a", "string"]}},
        {"content": b"x" * 10_000, "headers": {"content-type": "application/octet-stream"}},
    ]
    forged = TokenSigner().headers("mallory", roles=["admin"])  # signed with a key no service trusts
    for prefix, factory, settings_class in SERVICES:
        async with in_process(factory(settings_for(settings_class, servers, database_url, bucket))) as client:
            document = (await client.get(f"{prefix}/openapi.json")).json()
            for (method, path), op in operations_of(document).items():
                if "security" not in op:
                    continue
                url = re.sub(r"{[^}]+}", "x!*", path) + "?limit=zero&cursor=%00"
                anonymous = ({}, {"authorization": "Bearer not-a-token"}, {"authorization": "Basic eA=="})
                for credentials in (*anonymous, forged):
                    for body in bodies:
                        headers = {**body.get("headers", {}), **credentials}
                        rest = {k: v for k, v in body.items() if k != "headers"}
                        response = await client.request(method, url, headers=headers, **rest)
                        assert response.status_code == 401, (method, path, credentials, response.text)
                        assert response.headers["www-authenticate"] == "Bearer"
                        assert response.headers["content-type"] == "application/problem+json"


async def test_anonymous_operations_need_no_token(documents: dict[str, Any]) -> None:
    anonymous = {(method, _normalized(path)) for method, path, who in CONTRACT if who == "anyone"}
    for prefix, document in documents.items():
        for (method, path), op in operations_of(document).items():
            if (method, _normalized(path)) in anonymous or path.removeprefix(prefix) in STANDARD:
                assert "security" not in op, (method, path)


async def test_a_method_a_path_lacks_is_a_405_that_allows_every_method_the_path_has(
    servers: Servers, database_url: str, bucket: str
) -> None:
    methods = {"GET", "POST", "PUT", "PATCH", "DELETE"}
    for prefix, factory, settings_class in SERVICES:
        async with in_process(factory(settings_for(settings_class, servers, database_url, bucket))) as client:
            document = (await client.get(f"{prefix}/openapi.json")).json()
            patterns = {path: re.compile(re.sub(r"{[^}]+}", "[^/]+", path) + "$") for path in document["paths"]}
            for path, item in document["paths"].items():
                documented = {method.upper() for method in item}
                allowed = documented | ({"HEAD"} if "GET" in documented else set())
                url = re.sub(r"{[^}]+}", "x", path)
                # `/packages/health` is also `/packages/{name}` (a reserved name): DELETE goes there.
                elsewhere = {m.upper() for p, rx in patterns.items() if rx.match(url) for m in document["paths"][p]}
                for method in sorted(methods - elsewhere):
                    response = await client.request(method, url)
                    assert response.status_code == 405, (method, path, response.text)
                    assert set(response.headers["allow"].split(", ")) == allowed, (method, path)
                    assert response.headers["content-type"] == "application/problem+json"
