"""Packages and versions as metadata: names, access, search, yank and precedence."""

from __future__ import annotations

import pytest

from devstack.tokens import TokenSigner
from package_service.app import create_app
from package_service.settings import PackageSettings
from tests.conftest import Servers
from tests.helpers import in_process, service_settings
from tests.integration.packages.conftest import Registry


async def test_create_and_find_in_any_spelling(registry: Registry) -> None:
    created = await registry.create("My.Model_v2", description="A model.")
    assert created["name"] == "My.Model_v2"
    assert created["owner"] == "olivia"
    assert created["visibility"] == "private"
    assert created["latest_version"] is None
    assert created["version_count"] == 0
    for spelling in ("my-model-v2", "MY_MODEL.V2", "my--model__v2"):
        found = await registry.client.get(f"/packages/{spelling}", headers=registry.callers.owner)
        assert found.status_code == 200
        assert found.json()["name"] == "My.Model_v2"
    taken = await registry.client.post("/packages", json={"name": "my-model.v2"}, headers=registry.callers.writer)
    assert taken.status_code == 409


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".hidden",
        "trailing-",
        "a/b",
        "a%2Fb",
        "nul\x00",
        "spa ce",
        "x" * 101,
        "m\u043edel",  # Cyrillic o
        "\uff4dodel",  # fullwidth m
        "",
        "health",
        "Docs",
    ],
)
async def test_hostile_and_reserved_names_are_refused(registry: Registry, name: str) -> None:
    response = await registry.client.post("/packages", json={"name": name}, headers=registry.callers.owner)
    assert response.status_code == 400, (name, response.text)


async def test_hostile_names_in_paths_find_nothing(registry: Registry) -> None:
    await registry.create("model")
    for path in ("/packages/..%2Fmodel", "/packages/model%00", "/packages/" + "m" * 200, "/packages/m\u043edel"):
        response = await registry.client.get(path, headers=registry.callers.owner)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"


async def test_unauthenticated_calls_are_401(registry: Registry) -> None:
    await registry.create("model")
    for method, path in (("GET", "/packages"), ("GET", "/packages/model"), ("POST", "/packages")):
        response = await registry.client.request(method, path, json={"name": "x"} if method == "POST" else None)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


ACCESS = {
    # caller: (private read, public read, patch, delete)
    "owner": (200, 200, 200, 204),
    "writer": (200, 200, 403, 403),
    "reader": (200, 200, 403, 403),
    "stranger": (404, 200, 404, 404),
    "admin": (200, 200, 200, 204),
    "service": (404, 200, 404, 404),
}


@pytest.mark.parametrize("caller", sorted(ACCESS))
async def test_access_matrix_for_package_endpoints(registry: Registry, caller: str) -> None:
    headers = getattr(registry.callers, caller)
    private_read, public_read, patch, delete = ACCESS[caller]
    await registry.create("private-pkg", read_groups=["readers"], write_groups=["writers"])
    await registry.create("public-pkg", visibility="public", read_groups=["readers"], write_groups=["writers"])
    assert (await registry.client.get("/packages/private-pkg", headers=headers)).status_code == private_read
    assert (await registry.client.get("/packages/public-pkg", headers=headers)).status_code == public_read
    patched = await registry.client.patch("/packages/private-pkg", json={"description": "new"}, headers=headers)
    assert patched.status_code == patch
    deleted = await registry.client.delete("/packages/private-pkg", headers=headers)
    assert deleted.status_code == delete
    listed = (await registry.client.get("/packages", headers=headers)).json()["items"]
    visible = {item["name"] for item in listed}
    assert ("private-pkg" in visible) == (private_read == 200 and delete != 204)
    assert "public-pkg" in visible


async def test_owner_changes_visibility_and_groups(registry: Registry) -> None:
    await registry.create("model")
    assert (await registry.client.get("/packages/model", headers=registry.callers.reader)).status_code == 404
    change = {"visibility": "private", "read_groups": ["readers", "readers"], "description": "shared"}
    patched = await registry.client.patch("/packages/model", json=change, headers=registry.callers.owner)
    assert patched.json()["read_groups"] == ["readers"]
    assert patched.json()["description"] == "shared"
    assert patched.json()["updated_at"] >= patched.json()["created_at"]
    assert (await registry.client.get("/packages/model", headers=registry.callers.reader)).status_code == 200
    bad = await registry.client.patch("/packages/model", json={"owner": "sam"}, headers=registry.callers.owner)
    assert bad.status_code == 400


async def test_search_by_substring_owner_and_pagination(registry: Registry) -> None:
    await registry.create("resnet-50", description="Image CLASSIFIER", visibility="public")
    await registry.create("bert-base", description="language model", visibility="public")
    await registry.create("llama", description="another Language model", visibility="public")
    await registry.create("secret-model", description="language model")
    await registry.create("wendys-data", headers=registry.callers.writer, visibility="public")
    reader = registry.callers.reader

    async def names(**params: object) -> list[str]:
        response = await registry.client.get("/packages", params=params, headers=reader)
        assert response.status_code == 200, response.text
        return [item["name"] for item in response.json()["items"]]

    assert await names(q="LANGUAGE") == ["bert-base", "llama"]
    assert await names(q="classifier") == ["resnet-50"]
    assert await names(q="%") == []
    assert await names(q="_") == []
    assert await names(owner="wendy") == ["wendys-data"]
    assert await names(regex="^(bert|llama)") == ["bert-base", "llama"]
    first = (await registry.client.get("/packages", params={"limit": 2}, headers=reader)).json()
    following = {"limit": 2, "cursor": first["next_cursor"]}
    second = (await registry.client.get("/packages", params=following, headers=reader)).json()
    assert [i["name"] for i in first["items"] + second["items"]] == ["bert-base", "llama", "resnet-50", "wendys-data"]
    assert second["next_cursor"] is None
    for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "%%%"}, {"regex": "(unclosed"}, {"regex": "x" * 201}):
        assert (await registry.client.get("/packages", params=bad, headers=reader)).status_code == 400, bad


@pytest.mark.parametrize("pattern", [r"(a+)+$b", r"(a|aa)+$b", r"^(a?){25}(a){25}$", r"(.*a){20}b", r"(x+x+)+y"])
async def test_classic_redos_patterns_answer_promptly(registry: Registry, pattern: str) -> None:
    await registry.create("aaaa", description="a" * 3000, visibility="public")
    response = await registry.client.get("/packages", params={"regex": pattern}, headers=registry.callers.reader)
    assert response.status_code == 200
    assert response.json()["items"] == []


async def test_a_regex_over_its_time_budget_is_400(servers: Servers, database_url: str, bucket: str) -> None:
    signer = TokenSigner()
    settings = PackageSettings(
        **service_settings(servers, database_url, bucket, auth_public_keys=signer.public_pem, regex_timeout_ms=1)
    )
    async with in_process(create_app(settings)) as client:
        owner = signer.headers("olivia")
        for index in range(40):
            body = {"name": f"long-{index}", "description": "a" * 3000, "visibility": "public"}
            assert (await client.post("/packages", json=body, headers=owner)).status_code == 201
        slow = r"(.*){1,100}(.*){1,100}(.*){1,100}x"
        response = await client.get("/packages", params={"regex": slow}, headers=owner)
        assert response.status_code == 400
        assert "too costly" in response.json()["detail"]
        assert (await client.get("/packages", params={"q": "long-1"}, headers=owner)).status_code == 200
