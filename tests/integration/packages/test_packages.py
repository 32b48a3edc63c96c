"""Packages and versions as metadata: names, access, search, yank and precedence."""

from __future__ import annotations

import base64
import random

import pytest

from devstack.tokens import TokenSigner
from package_service.app import create_app
from package_service.settings import PackageSettings
from tests.conftest import Servers
from tests.helpers import in_process, service_settings
from tests.integration.packages.conftest import Registry
from tests.integration.packages.test_presigned import start


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
    assert bad.status_code == 403, "only admins move a package to another owner"


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
    assert await names(q="b_rt") == [], "_ is a separator in names, never a LIKE wildcard"
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


async def test_q_finds_names_in_any_spelling(registry: Registry) -> None:
    await registry.create("Resnet.Tiny", visibility="public")
    await registry.create("resnet-tinyer", visibility="public")
    await registry.create("resnet-50", description="not tiny at all", visibility="public")
    await registry.create("notes", description="Tiny notes, as-is", visibility="public")
    reader = registry.callers.reader

    async def names(q: str) -> list[str]:
        response = await registry.client.get("/packages", params={"q": q}, headers=reader)
        assert response.status_code == 200, response.text
        return [item["name"] for item in response.json()["items"]]

    for spelling in ("resnet-tiny", "resnet_tiny", "Resnet.Tiny", "RESNET..TINY", "resnet._-tiny"):
        assert await names(spelling) == ["Resnet.Tiny", "resnet-tinyer"], spelling
    assert await names("net.ti") == ["Resnet.Tiny", "resnet-tinyer"], "a part of a name, in any spelling"
    assert await names("NOTES, AS-IS") == ["notes"], "descriptions still match as written"
    assert await names("tiny") == ["notes", "resnet-50", "Resnet.Tiny", "resnet-tinyer"], "by normalized name"
    assert await names("resnet tiny") == [], "a space is no separator in names"


async def test_name_search_can_use_its_trigram_index(registry: Registry) -> None:
    engine = registry.app.state.resources.engine
    async with engine.begin() as connection:
        await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = await connection.exec_driver_sql(
            "EXPLAIN SELECT id FROM packages.packages WHERE normalized_name LIKE '%resnet-tiny%'"
        )
        text = "\n".join(row[0] for row in plan.all())
    assert "packages_normalized_name_trgm" in text, text


async def test_a_deleted_packages_name_is_reserved_for_its_last_owner_and_admins(registry: Registry) -> None:
    callers = registry.callers
    await registry.create("My.Model", write_groups=["writers"])
    assert (await registry.upload("my.model", "1.0.0", b"weights")).status_code == 201
    assert (await registry.client.delete("/packages/my-model", headers=callers.owner)).status_code == 204

    # Anybody else, in any spelling, by any way of creating a package.
    created = await registry.client.post("/packages", json={"name": "MY_MODEL"}, headers=callers.writer)
    assert created.status_code == 409, created.text
    assert "last owner" in created.json()["detail"]
    streamed = await registry.upload("my--model", "2.0.0", b"other weights", callers.writer)
    assert streamed.status_code == 409, streamed.text
    presigned = await start(registry, name="My_Model", version="2.0.0", data=b"other weights", headers=callers.writer)
    assert presigned.status_code == 409, presigned.text
    assert await registry.sql("SELECT count(*) FROM packages.packages") == [(0,)]
    assert await registry.objects() == []
    assert await registry.open_multipart_uploads() == []

    # The last owner takes it back, and its spent versions stay spent.
    assert (await registry.upload("MY.MODEL", "1.0.0", b"weights")).status_code == 409, "a spent version"
    assert (await start(registry, name="my_model", version="1.0.0", data=b"weights")).status_code == 409
    again = await registry.upload("MY.MODEL", "1.1.0", b"weights")
    assert again.status_code == 201, again.text
    package = (await registry.client.get("/packages/my-model", headers=callers.owner)).json()
    assert (package["name"], package["owner"]) == ("MY.MODEL", "olivia")
    assert await registry.sql("SELECT count(*) FROM packages.reserved_names") == [(0,)], "taken back"

    # Deleted again, by an admin: reserved for olivia, its last owner; an admin may create it too.
    assert (await registry.client.delete("/packages/my-model", headers=callers.admin)).status_code == 204
    assert (await registry.upload("my-model", "1.1.0", b"x", callers.admin)).status_code == 409, "spent for admins too"
    by_admin = await registry.client.post("/packages", json={"name": "my-model"}, headers=callers.admin)
    assert by_admin.status_code == 201, by_admin.text
    assert by_admin.json()["owner"] == "ada"
    assert (await registry.client.delete("/packages/my-model", headers=callers.admin)).status_code == 204
    mine = await registry.client.post("/packages", json={"name": "my-model"}, headers=callers.owner)
    assert mine.status_code == 409, "now reserved for its last owner, the admin"


async def test_names_never_deleted_are_not_reserved(registry: Registry) -> None:
    await registry.create("kept")
    await registry.create("gone")
    assert (await registry.client.delete("/packages/gone", headers=registry.callers.owner)).status_code == 204
    assert (
        await registry.client.post("/packages", json={"name": "gone-2"}, headers=registry.callers.writer)
    ).status_code == 201
    assert (
        await registry.client.post("/packages", json={"name": "kept"}, headers=registry.callers.writer)
    ).status_code == 409


async def test_only_admins_may_move_a_package_and_only_to_a_checked_user(registry: Registry) -> None:
    """The registry fixture knows no auth_service: an admin's move cannot be checked, so it is a 503."""
    await registry.create("model", write_groups=["writers"])
    for caller in ("owner", "writer"):
        moved = await registry.client.patch(
            "/packages/model", json={"owner": "sam"}, headers=getattr(registry.callers, caller)
        )
        assert moved.status_code == 403, caller
    hidden = await registry.client.patch("/packages/model", json={"owner": "sam"}, headers=registry.callers.stranger)
    assert hidden.status_code == 404
    unchecked = await registry.client.patch("/packages/model", json={"owner": "sam"}, headers=registry.callers.admin)
    assert unchecked.status_code == 503
    assert "retry-after" in unchecked.headers
    for bad in ("s", "-sam", "sam/../x", "sam\u0000", "s" * 65):
        invalid = await registry.client.patch("/packages/model", json={"owner": bad}, headers=registry.callers.admin)
        assert invalid.status_code == 400, bad
    same = await registry.client.patch("/packages/model", json={"owner": "OLIVIA"}, headers=registry.callers.admin)
    assert same.status_code == 200, "the owner it has: nothing to check"
    assert (await registry.client.get("/packages/model", headers=registry.callers.owner)).json()["owner"] == "olivia"


GARBAGE_CURSORS = [
    "%%%",
    "\u00e9t\u00e9",
    "AAAA",  # three NUL bytes
    base64.urlsafe_b64encode(random.Random(13).randbytes(48)).decode(),
    base64.urlsafe_b64encode(b"\xff\xfe\x00[").decode(),  # not UTF-8
    base64.urlsafe_b64encode(b"[").decode(),  # not JSON
    *(
        base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
        for text in (
            "123",
            '"abc"',
            "null",
            "{}",
            '{"a": "b"}',
            "[]",
            '["a", "b"]',
            "[1]",
            "[null]",
            "[true]",
            "[1e400]",
            '[["a"]]',
            '[{"a": "b"}]',
            '["a\\u0000"]',
            '["\\ud800"]',
            "[" * 150 + "]" * 150,
            "[NaN]",
        )
    ),
]


@pytest.mark.parametrize("path", ["/packages", "/packages/model/versions"])
async def test_garbage_cursors_are_400(registry: Registry, path: str) -> None:
    await registry.create("model")
    hex_only = ['["zz"]', '["abc"]', '["\u0661\u0662"]'] if path.endswith("/versions") else []
    cursors = GARBAGE_CURSORS + [base64.urlsafe_b64encode(text.encode()).decode() for text in hex_only]
    for cursor in cursors:
        response = await registry.client.get(path, params={"cursor": cursor}, headers=registry.callers.owner)
        assert response.status_code == 400, (cursor, response.text)
        assert response.json()["detail"] in {"The cursor is not valid.", "The request is invalid."}, cursor
    listed = await registry.client.get(path, headers=registry.callers.owner)
    assert listed.status_code == 200, "good requests still work"


async def test_search_parameters_the_database_cannot_hold_are_400(registry: Registry) -> None:
    await registry.create("model", visibility="public")
    for params in ({"q": "mo\u0000del"}, {"regex": "mo\u0000"}, {"owner": "oli\u0000via"}):
        response = await registry.client.get("/packages", params=params, headers=registry.callers.reader)
        assert response.status_code == 400, (params, response.text)
    for raw in ("q=%ED%A0%80", "q=%FF", "regex=%ED%A0%80", "owner=%C0%AF"):  # not UTF-8: replaced, found nowhere
        response = await registry.client.get(f"/packages?{raw}", headers=registry.callers.reader)
        assert response.status_code == 200, (raw, response.text)
        assert response.json()["items"] == []
