"""Every version endpoint against every kind of caller, on a private and on a public package.

The expectations follow API.md section 3: readers read, writers also publish, yank and edit
version metadata, only the owner or an admin deletes; who may not read gets 404, who may read
but not act gets 403; a public package is readable by any authenticated caller.
"""

from __future__ import annotations

import pytest

from tests.integration.packages.conftest import Registry

CALLERS = ("owner", "writer", "reader", "stranger", "admin", "service")

# caller -> (read, write, admin) outcome on a private package with read and write groups
PRIVATE = {
    "owner": (200, 200, 204),
    "writer": (200, 200, 403),
    "reader": (200, 403, 403),
    "stranger": (404, 404, 404),
    "admin": (200, 200, 204),
    "service": (404, 404, 404),
}
# on a public package strangers read, and get 403 for the rest
PUBLIC = PRIVATE | {"stranger": (200, 403, 403), "service": (200, 403, 403)}


@pytest.mark.parametrize("visibility", ["private", "public"])
@pytest.mark.parametrize("caller", CALLERS)
async def test_version_endpoints(registry: Registry, caller: str, visibility: str) -> None:
    expected_read, expected_write, expected_admin = (PRIVATE if visibility == "private" else PUBLIC)[caller]
    await registry.create("pkg", visibility=visibility, read_groups=["readers"], write_groups=["writers"])
    for version in ("1.0.0", "2.0.0"):
        assert (await registry.upload("pkg", version, version.encode())).status_code == 201
    await registry.sql("UPDATE packages.versions SET status = 'available'")
    await registry.sql("UPDATE packages.versions SET status = 'yanked' WHERE version = '2.0.0'")
    headers = getattr(registry.callers, caller)
    client = registry.client

    reads = [
        await client.get("/packages/pkg/versions", headers=headers),
        await client.get("/packages/pkg/versions/1.0.0", headers=headers),
        await client.get("/packages/pkg/versions/latest", headers=headers),
        await client.get("/packages/pkg/versions/1.0.0/content", headers=headers),
    ]
    assert [r.status_code for r in reads] == [expected_read] * 4

    writes = [
        await client.patch("/packages/pkg/versions/1.0.0", json={"description": "d"}, headers=headers),
        await client.post("/packages/pkg/versions/2.0.0/unyank", headers=headers),
        await client.put("/packages/pkg/versions/3.0.0/content", content=b"3", headers=headers),
    ]
    write_codes = [r.status_code for r in writes]
    assert write_codes == [expected_write, expected_write, 201 if expected_write == 200 else expected_write]

    deleted = await client.delete("/packages/pkg/versions/1.0.0", headers=headers)
    assert deleted.status_code == expected_admin
