"""`GET /packages/{name}/access`: the access list, for the services that decide on it (and admins) only."""

from __future__ import annotations

import hashlib

from tests.integration.packages.conftest import Registry


async def test_services_and_admins_read_any_access_list(registry: Registry) -> None:
    await registry.create("My.Model", read_groups=["readers"], write_groups=["writers"])
    assert (await registry.upload("my-model", "1.0.0+build.1", b"bytes")).status_code == 201
    for headers in (registry.callers.service, registry.callers.admin):
        response = await registry.client.get("/packages/MY_MODEL/access", headers=headers)
        assert response.status_code == 200
        assert response.json() == {
            "package": "My.Model", "owner": "olivia", "visibility": "private", "read_groups": ["readers"],
            "write_groups": ["writers"], "version": None,
        }  # fmt: skip
    with_version = await registry.client.get(
        "/packages/my-model/access", params={"version": "v1.0.0"}, headers=registry.callers.service
    )
    assert with_version.json()["version"] == {
        "version": "1.0.0+build.1", "status": "pending", "sha256": hashlib.sha256(b"bytes").hexdigest(), "size": 5,
    }  # fmt: skip
    for missing in ("2.0.0", "latest", "not-a-version"):
        response = await registry.client.get(
            "/packages/my-model/access", params={"version": missing}, headers=registry.callers.service
        )
        assert (response.status_code, response.json()["version"]) == (200, None), missing


async def test_nobody_else_reads_access_lists(registry: Registry) -> None:
    await registry.create("pkg", visibility="public")
    for caller in ("owner", "writer", "reader", "stranger"):
        response = await registry.client.get("/packages/pkg/access", headers=getattr(registry.callers, caller))
        assert response.status_code == 403, caller
        assert response.headers["content-type"] == "application/problem+json"
    assert (await registry.client.get("/packages/pkg/access")).status_code == 401


async def test_unknown_packages_are_404(registry: Registry) -> None:
    for name in ("nope", "..", "a%2Fb"):
        response = await registry.client.get(f"/packages/{name}/access", headers=registry.callers.service)
        assert response.status_code == 404, name
