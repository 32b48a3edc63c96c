"""Bytes through package_service, against real PostgreSQL and S3: uploads, downloads, deletion."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.helpers import eventually, raw_status, real_server
from tests.integration.packages.conftest import MAX_ARTIFACT_BYTES, Registry

DATA = bytes(range(256)) * 40  # 10 KiB


async def publish(registry: Registry, name: str, version: str, data: bytes = DATA, **headers: str) -> dict[str, Any]:
    response = await registry.upload(name, version, data, **headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def make_available(registry: Registry) -> None:
    await registry.sql("UPDATE packages.versions SET status = 'available' WHERE status = 'pending'")


async def test_upload_creates_a_pending_version_and_queues_its_validation(registry: Registry) -> None:
    version = await publish(registry, "Model", "v1.2.3+build.7", **{"X-Filename": "model.safetensors"})
    assert version["package"] == "Model"
    assert version["version"] == "1.2.3+build.7"
    assert version["status"] == "pending"
    assert version["size"] == len(DATA)
    assert version["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert version["filename"] == "model.safetensors"
    assert version["uploaded_by"] == "olivia"
    assert version["content_type"] == "application/octet-stream"
    package = (await registry.client.get("/packages/model", headers=registry.callers.owner)).json()
    assert package["owner"] == "olivia", "the upload created the package, owned by the caller"
    assert package["version_count"] == 1
    assert package["latest_version"] is None, "pending versions are never latest"
    jobs = await registry.sql("SELECT queue, payload->>'sha256', payload->>'size' FROM queue.jobs")
    assert jobs == [("validation", version["sha256"], str(len(DATA)))]
    transfers = await registry.sql("SELECT direction, mode, bytes, outcome FROM packages.transfers")
    assert transfers == [("upload", "stream", len(DATA), "ok")]
    assert len(await registry.objects()) == 1
    assert await registry.sql("SELECT count(*) FROM packages.orphans") == [(0,)]


async def test_checksum_header_is_checked(registry: Registry) -> None:
    good = hashlib.sha256(DATA).hexdigest().upper()
    assert (await registry.upload("model", "1.0.0", DATA, **{"X-Checksum-Sha256": good})).status_code == 201
    wrong = hashlib.sha256(b"other").hexdigest()
    response = await registry.upload("model", "1.0.1", DATA, **{"X-Checksum-Sha256": wrong})
    assert response.status_code == 400
    assert "SHA-256" in response.json()["detail"]
    malformed = await registry.upload("model", "1.0.2", DATA, **{"X-Checksum-Sha256": "abc"})
    assert malformed.status_code == 400
    assert len(await registry.objects()) == 1
    assert await registry.open_multipart_uploads() == []
    versions = (await registry.client.get("/packages/model/versions", headers=registry.callers.owner)).json()
    assert [v["version"] for v in versions["items"]] == ["1.0.0"], "only the upload whose checksum matched"


async def test_too_large_bodies_are_refused_both_ways(registry: Registry) -> None:
    announced = (
        f"PUT /packages/model/versions/1.0.0/content HTTP/1.1\r\nHost: depot\r\n"
        f"Authorization: {registry.callers.owner['Authorization']}\r\nContent-Length: {MAX_ARTIFACT_BYTES + 1}"
    )
    assert await raw_status(str(registry.client.base_url).rstrip("/"), announced, b"x") == 413, "on the length alone"

    async def endless() -> AsyncIterator[bytes]:
        chunk = b"\0" * (1024 * 1024)
        for _ in range(MAX_ARTIFACT_BYTES // len(chunk) + 2):
            yield chunk

    streamed = await registry.client.put(
        "/packages/model/versions/1.0.0/content", content=endless(), headers=registry.callers.owner
    )
    assert streamed.status_code == 413
    assert await registry.objects() == []
    assert await registry.open_multipart_uploads() == []
    assert await registry.sql("SELECT count(*) FROM packages.versions") == [(0,)]
    assert (await registry.upload("model", "1.0.0", DATA)).status_code == 201, "a refused upload spends nothing"


@pytest.mark.parametrize("again", ["1.0.0", "v1.0.0", "1.0.0+other.build"])
async def test_a_version_is_published_once(registry: Registry, again: str) -> None:
    await publish(registry, "model", "1.0.0+build")
    response = await registry.upload("model", again, b"different bytes")
    assert response.status_code == 409
    assert len(await registry.objects()) == 1


async def test_racing_publishers_get_one_201_and_one_409(registry: Registry) -> None:
    await registry.create("model", write_groups=["writers"])
    results = await asyncio.gather(
        registry.upload("model", "2.0.0", DATA, registry.callers.owner),
        registry.upload("model", "2.0.0", DATA[::-1], registry.callers.writer),
    )
    assert sorted(r.status_code for r in results) == [201, 409]
    assert len(await registry.objects()) == 1
    assert await registry.sql("SELECT count(*) FROM packages.versions") == [(1,)]


async def test_a_client_that_disconnects_mid_body_leaves_nothing(registry: Registry) -> None:
    async with real_server(registry.app) as url:
        host, port = url.removeprefix("http://").split(":")
        request = (
            "PUT /packages/dropped/versions/1.0.0/content HTTP/1.1\r\n"
            f"Host: {host}\r\nAuthorization: {registry.callers.owner['Authorization']}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 41943040\r\n\r\n"
        )

        def send_part_and_vanish() -> None:
            with socket.create_connection((host, int(port))) as connection:
                connection.sendall(request.encode())
                chunk = b"\1" * (1024 * 1024)
                for _ in range(20):  # 20 of the 40 MiB announced, then gone
                    connection.sendall(chunk)

        with capture_logs() as logs:
            await asyncio.to_thread(send_part_and_vanish)

            async def given_up() -> bool:
                outcomes = await registry.sql("SELECT outcome FROM packages.transfers")
                logged = any(line["event"] == "request" for line in logs)
                return logged and not await registry.open_multipart_uploads() and outcomes == [("aborted",)]

            await eventually(given_up, message="the multipart upload aborted and the transfer recorded as aborted")
    assert await registry.objects() == []
    assert await registry.sql("SELECT count(*) FROM packages.versions") == [(0,)]
    assert await registry.sql("SELECT count(*) FROM packages.packages") == [(0,)]
    assert await registry.sql("SELECT outcome FROM packages.transfers") == [("aborted",)]
    # A client going away is no fault of the service: no error, no stack trace, no 5xx counted.
    (access,) = [line for line in logs if line["event"] == "request"]
    assert access["status"] == 499
    assert [line["event"] for line in logs if line["log_level"] in {"error", "critical"}] == []
    assert "client_disconnected" in [line["event"] for line in logs]


@pytest.mark.parametrize(
    ("header", "value"),
    [("X-Filename", "../etc/passwd"), ("X-Filename", "a\\b"), ("X-Filename", "x" * 256), ("Content-Type", "\x7f")],
)
async def test_hostile_upload_headers_are_refused(registry: Registry, header: str, value: str) -> None:
    assert (await registry.upload("model", "1.0.0", DATA, **{header: value})).status_code == 400


async def test_invalid_versions_are_refused(registry: Registry) -> None:
    for version in ("1.0", "01.0.0", "1.0.0-", "latest", "1.0.0.0"):
        assert (await registry.upload("model", version, DATA)).status_code == 400, version


async def test_download_relays_bytes_with_headers_and_ranges(registry: Registry) -> None:
    await publish(registry, "model", "1.0.0", **{"X-Filename": 'my "best" weights.bin'})
    owner = registry.callers.owner
    pending = await registry.client.get("/packages/model/versions/1.0.0/content", headers=owner)
    assert pending.status_code == 409
    as_admin = await registry.client.get("/packages/model/versions/1.0.0/content", headers=registry.callers.admin)
    assert as_admin.content == DATA
    await make_available(registry)

    full = await registry.client.get("/packages/model/versions/latest/content", headers=owner)
    sha = hashlib.sha256(DATA).hexdigest()
    assert full.status_code == 200
    assert full.content == DATA
    assert full.headers["etag"] == f'"{sha}"'
    assert full.headers["x-checksum-sha256"] == sha
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-disposition"].startswith("attachment;")
    disposition = full.headers["content-disposition"]
    assert 'filename="my__best__weights.bin"' in disposition, "a plain fallback without quotes"
    assert "filename*=UTF-8''my%20%22best%22%20weights.bin" in disposition

    cases = {
        "bytes=0-0": DATA[:1],
        "bytes=-1": DATA[-1:],
        f"bytes={len(DATA) - 1}-": DATA[-1:],
        "bytes=100-199": DATA[100:200],
    }
    for value, expected in cases.items():
        ranged = await registry.client.get("/packages/model/versions/1.0.0/content", headers={**owner, "Range": value})
        assert ranged.status_code == 206, value
        assert ranged.content == expected, value
    beyond = await registry.client.get(
        "/packages/model/versions/1.0.0/content", headers={**owner, "Range": f"bytes={len(DATA)}-"}
    )
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(DATA)}"

    cached = await registry.client.get(
        "/packages/model/versions/1.0.0/content", headers={**owner, "If-None-Match": f'"{sha}"'}
    )
    assert cached.status_code == 304
    assert cached.content == b""
    counts = await registry.sql("SELECT download_count FROM packages.versions")
    assert counts == [(6,)], "the admin's, the full one and four ranges; not the 409, the 416 or the 304"


async def test_download_by_redirect_to_a_presigned_url(registry: Registry) -> None:
    await publish(registry, "model", "1.0.0")
    await make_available(registry)
    response = await registry.client.get(
        "/packages/model/versions/1.0.0/content", params={"redirect": 1}, headers=registry.callers.owner
    )
    assert response.status_code == 307
    location = response.headers["location"]
    assert location.startswith(registry.servers.s3.endpoint_url)
    assert "X-Amz-Signature" in location
    async with httpx.AsyncClient() as direct:
        fetched = await direct.get(location)
        assert fetched.content == DATA
        tampered = await direct.get(location.replace("X-Amz-Expires=60", "X-Amz-Expires=600"))
        assert tampered.status_code == 403
    assert await registry.sql("SELECT mode FROM packages.transfers WHERE direction = 'download'") == [("redirect",)]


async def test_yank_latest_and_precedence(registry: Registry) -> None:
    for version in ("1.0.0", "1.10.0", "1.2.0", "2.0.0-rc.1", "1.10.0-beta"):
        await publish(registry, "model", version, data=version.encode())
    await make_available(registry)
    owner = registry.callers.owner
    listed = (await registry.client.get("/packages/model/versions", headers=owner)).json()
    assert [v["version"] for v in listed["items"]] == ["2.0.0-rc.1", "1.10.0", "1.10.0-beta", "1.2.0", "1.0.0"]
    latest = (await registry.client.get("/packages/model/versions/latest", headers=owner)).json()
    assert latest["version"] == "1.10.0", "prereleases are never latest"

    yanked = await registry.client.post("/packages/model/versions/1.10.0/yank", json={"reason": "bad"}, headers=owner)
    assert yanked.json()["status"] == "yanked"
    assert yanked.json()["yank_reason"] == "bad"
    assert (await registry.client.get("/packages/model", headers=owner)).json()["latest_version"] == "1.2.0"
    still = await registry.client.get("/packages/model/versions/1.10.0/content", headers=owner)
    assert still.content == b"1.10.0", "a yanked version still downloads by exact version"
    hidden = (await registry.client.get("/packages/model/versions", headers=owner)).json()
    assert "1.10.0" not in [v["version"] for v in hidden["items"]]
    shown = await registry.client.get("/packages/model/versions", params={"include_yanked": True}, headers=owner)
    assert "1.10.0" in [v["version"] for v in shown.json()["items"]]
    only = await registry.client.get("/packages/model/versions", params={"status": "yanked"}, headers=owner)
    assert [v["version"] for v in only.json()["items"]] == ["1.10.0"]
    again = await registry.client.post("/packages/model/versions/1.10.0/yank", json={"reason": "x"}, headers=owner)
    assert again.status_code == 409
    back = await registry.client.post("/packages/model/versions/1.10.0/unyank", headers=owner)
    assert back.json()["status"] == "available"
    assert back.json()["yank_reason"] is None
    page = (await registry.client.get("/packages/model/versions", params={"limit": 2}, headers=owner)).json()
    rest = await registry.client.get(
        "/packages/model/versions", params={"limit": 10, "cursor": page["next_cursor"]}, headers=owner
    )
    assert [v["version"] for v in page["items"] + rest.json()["items"]] == [
        "2.0.0-rc.1", "1.10.0", "1.10.0-beta", "1.2.0", "1.0.0",
    ]  # fmt: skip
    assert rest.json()["next_cursor"] is None
    await registry.create("no-versions-yet")
    empty = await registry.client.get("/packages/No_Versions.Yet/versions", headers=owner)
    assert empty.json() == {"items": [], "next_cursor": None}
    assert (await registry.client.get("/packages/no-such-model/versions", headers=owner)).status_code == 404


async def test_a_version_list_brings_its_package_when_asked(registry: Registry) -> None:
    # `include=package`: a package's page in one call; the package is what `GET /packages/{name}` says.
    await registry.create("Model_X", read_groups=["readers"], description="the package itself")
    for version in ("1.0.0", "1.1.0", "2.0.0-rc.1"):
        await publish(registry, "Model_X", version, data=version.encode())
    await make_available(registry)
    await registry.client.post(
        "/packages/model-x/versions/1.1.0/yank", json={"reason": "r"}, headers=registry.callers.owner
    )

    async def listed(caller: dict[str, str], **params: Any) -> httpx.Response:
        return await registry.client.get("/packages/model.x/versions", params=params, headers=caller)

    for caller in (registry.callers.owner, registry.callers.reader, registry.callers.admin):
        package = (await registry.client.get("/packages/model-x", headers=caller)).json()
        plain = (await listed(caller, include_yanked="true")).json()
        both = (await listed(caller, include_yanked="true", include="package")).json()
        assert "package" not in plain, "the documented list is unchanged unless asked"
        assert both == {**plain, "package": package}
        assert both["package"]["latest_version"] == "1.0.0"
        assert both["package"]["version_count"] == 3
    first = (await listed(registry.callers.owner, include="package", limit=1)).json()
    rest = (await listed(registry.callers.owner, include="package", cursor=first["next_cursor"])).json()
    assert [v["version"] for v in first["items"] + rest["items"]] == ["2.0.0-rc.1", "1.0.0"]
    assert first["package"] == rest["package"]
    assert rest["package"]["name"] == "Model_X"
    for caller in (registry.callers.stranger, registry.callers.service):
        hidden = await listed(caller, include="package")
        assert hidden.status_code == 404
        assert "Model_X" not in hidden.text
    await registry.create("empty-one")
    empty = (
        await registry.client.get("/packages/Empty_One/versions?include=package", headers=registry.callers.owner)
    ).json()
    assert empty["items"] == []
    assert empty["package"]["name"] == "empty-one"
    assert empty["package"]["version_count"] == 0
    assert empty["package"]["latest_version"] is None
    for value in ("versions", "", "package,versions", "PACKAGE"):
        refused = await listed(registry.callers.owner, include=value)
        assert refused.status_code == 400, value
        assert refused.headers["Content-Type"] == "application/problem+json"
    missing = await registry.client.get("/packages/no-such/versions?include=package", headers=registry.callers.owner)
    assert missing.status_code == 404


async def test_a_version_list_shows_only_the_fields_asked_for(registry: Registry) -> None:
    # `fields`: a lighter list (a package's page shows no report or metadata); `version` is always there.
    owner = registry.callers.owner
    await registry.create("Model_F", description="the package")
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        await publish(registry, "Model_F", version)
    await make_available(registry)
    await registry.sql('UPDATE packages.versions SET validation = \'{"status": "passed", "checks": [{"name": "c"}]}\'')
    edit = {"description": "trained on X", "metadata": {"card": "m" * 1000}}
    edited = await registry.client.patch("/packages/model-f/versions/1.1.0", json=edit, headers=owner)
    assert edited.status_code == 200

    async def listed(caller: dict[str, str], **params: Any) -> httpx.Response:
        return await registry.client.get("/packages/model-f/versions", params=params, headers=caller)

    full = (await listed(owner)).json()
    assert full["items"][1]["metadata"] == edit["metadata"]
    everything = ",".join(full["items"][0])
    for fields in ("status,size", "version", "sha256,created_at,yank_reason", "metadata", "description,validation",
                   "package,status,version,status", everything):  # fmt: skip
        shown = (await listed(owner, fields=fields)).json()
        names = set(fields.split(",")) | {"version"}
        assert shown == {**full, "items": [{k: v for k, v in item.items() if k in names} for item in full["items"]]}
    with_package = (await listed(owner, fields="status", include="package", limit=2)).json()
    assert with_package["items"] == [{"version": v, "status": "available"} for v in ("2.0.0", "1.1.0")]
    assert with_package["package"] == (await registry.client.get("/packages/model-f", headers=owner)).json()
    rest = (await listed(owner, fields="status", include="package", cursor=with_package["next_cursor"])).json()
    assert rest["items"] == [{"version": "1.0.0", "status": "available"}]
    assert rest["next_cursor"] is None
    for fields in ("", "status,", "status,,size", "STATUS", "reports", "s3_key", "id", "sort_key", "x" * 301):
        refused = await listed(owner, fields=fields)
        assert refused.status_code == 400, fields
        assert refused.headers["Content-Type"] == "application/problem+json"
    hidden = await listed(registry.callers.stranger, fields="status")
    assert hidden.status_code == 404


async def test_version_metadata_edits(registry: Registry) -> None:
    await registry.create("model", write_groups=["writers"], read_groups=["readers"])
    await publish(registry, "model", "1.0.0")
    change = {"description": "trained on X", "metadata": {"accuracy": 0.93, "tags": ["vision"]}}
    edited = await registry.client.patch("/packages/model/versions/1.0.0", json=change, headers=registry.callers.writer)
    assert edited.json()["metadata"] == change["metadata"]
    assert edited.json()["description"] == "trained on X"
    reader = await registry.client.patch("/packages/model/versions/1.0.0", json=change, headers=registry.callers.reader)
    assert reader.status_code == 403
    huge = {"metadata": {"blob": "x" * (64 * 1024)}}
    assert (
        await registry.client.patch("/packages/model/versions/1.0.0", json=huge, headers=registry.callers.owner)
    ).status_code == 413
    nul = {"description": "a\u0000b"}
    assert (
        await registry.client.patch("/packages/model/versions/1.0.0", json=nul, headers=registry.callers.owner)
    ).status_code == 400


async def test_deleting_removes_bytes_and_spends_the_version(registry: Registry) -> None:
    await registry.create("model", write_groups=["writers"])
    await publish(registry, "model", "1.0.0")
    await publish(registry, "model", "1.1.0")
    denied = await registry.client.delete("/packages/model/versions/1.0.0", headers=registry.callers.writer)
    assert denied.status_code == 403
    deleted = await registry.client.delete("/packages/model/versions/1.0.0", headers=registry.callers.owner)
    assert deleted.status_code == 204
    assert len(await registry.objects()) == 1
    assert (await registry.upload("model", "1.0.0", DATA)).status_code == 409, "a spent version is never reused"
    assert (await registry.client.delete("/packages/model", headers=registry.callers.owner)).status_code == 204
    assert await registry.objects() == []
    assert await registry.sql("SELECT count(*) FROM packages.orphans") == [(0,)]
    assert (await registry.upload("MODEL", "1.1.0", DATA)).status_code == 409, "even after the package is gone"
    assert (await registry.upload("model", "1.2.0", DATA)).status_code == 201


UPLOAD_ACCESS = {"owner": 201, "writer": 201, "reader": 403, "stranger": 404, "admin": 201, "service": 404}


@pytest.mark.parametrize("caller", sorted(UPLOAD_ACCESS))
async def test_access_matrix_for_transfers(registry: Registry, caller: str) -> None:
    await registry.create("model", read_groups=["readers"], write_groups=["writers"])
    await publish(registry, "model", "0.1.0")
    await make_available(registry)
    headers = getattr(registry.callers, caller)
    assert (await registry.upload("model", "1.0.0", DATA, headers)).status_code == UPLOAD_ACCESS[caller]
    download = await registry.client.get("/packages/model/versions/0.1.0/content", headers=headers)
    assert download.status_code == (404 if caller in {"stranger", "service"} else 200)
    yank = await registry.client.post("/packages/model/versions/0.1.0/yank", json={"reason": "r"}, headers=headers)
    assert yank.status_code == {"owner": 200, "writer": 200, "admin": 200, "reader": 403}.get(caller, 404)


async def test_an_upload_whose_orphan_row_was_swept_is_not_committed(registry: Registry) -> None:
    """An upload slower than the orphan grace period may have lost its bytes to the janitor."""

    async def slow_body() -> AsyncIterator[bytes]:
        yield DATA
        # As the janitor would, once the upload is older than the grace period.
        await eventually(lambda: registry.sql("DELETE FROM packages.orphans RETURNING 1"))
        yield DATA

    response = await registry.client.put(
        "/packages/model/versions/1.0.0/content", content=slow_body(), headers=registry.callers.owner
    )
    assert response.status_code == 409
    assert "took longer" in response.json()["detail"]
    assert await registry.sql("SELECT count(*) FROM packages.versions") == [(0,)]
    assert await registry.objects() == []
    assert (await registry.upload("model", "1.0.0", DATA)).status_code == 201, "the version was not spent"


async def test_an_upload_whose_orphan_row_a_sweep_has_started_on_is_not_committed(registry: Registry) -> None:
    """Once the janitor has marked a key to delete its bytes (and holds no lock while S3 does), no
    version may take the key over."""

    async def slow_body() -> AsyncIterator[bytes]:
        yield DATA
        marked = "UPDATE packages.orphans SET sweep_started_at = now() RETURNING 1"  # as the janitor does
        await eventually(lambda: registry.sql(marked))
        yield DATA

    response = await registry.client.put(
        "/packages/model/versions/1.0.0/content", content=slow_body(), headers=registry.callers.owner
    )
    assert response.status_code == 409
    assert "took longer" in response.json()["detail"]
    assert await registry.sql("SELECT count(*) FROM packages.versions") == [(0,)]
    assert await registry.objects() == [], "the bytes are deleted"
    assert await registry.sql("SELECT count(*) FROM packages.orphans") == [(1,)], "and the janitor's row stays"


RENDERED_TYPES = [
    "text/html",
    "TEXT/HTML",
    "Text/Html; charset=utf-8",
    "text/html;",
    "application/xhtml+xml",
    "image/svg+xml",
    "IMAGE/SVG+XML; charset=utf-8",
    "text/xml",
    "application/xml",
    "application/rss+xml",
    "application/xslt+xml",
    "text/xsl",
    "application/mathml+xml",
    "application/vnd.mozilla.xul+xml",
    "application/javascript",
    "text/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "text/ecmascript",
    "application/pdf",
    "application/x-pdf",
    "application/x-shockwave-flash",
    "multipart/x-mixed-replace; boundary=frame",
    "multipart/related",
    "message/rfc822",
    "text/css",
    "text/csv",
    "text/vtt",
    "text/plain/html",
    "*/*",
    "html",
    "text/plain, text/html",
]
INERT_TYPES = {
    "application/octet-stream": "application/octet-stream",
    "application/x-safetensors": "application/x-safetensors",
    "application/zip": "application/zip",
    "Application/GZIP": "application/gzip",
    "image/png": "image/png",
    "application/json": "application/json",
    "text/plain": "text/plain",
    "text/plain; charset=iso-8859-1": "text/plain",
}


def never_rendered(response: httpx.Response, filename: str) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == "sandbox"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert f'filename="{filename}"' in disposition


async def test_downloads_are_never_rendered_by_a_browser(registry: Registry) -> None:
    cases = [(stored, "application/octet-stream") for stored in RENDERED_TYPES] + list(INERT_TYPES.items())
    for number, (stored, _) in enumerate(cases):
        response = await registry.upload(
            "model", f"1.0.{number}", b"<script>alert(1)</script>", **{"Content-Type": stored}
        )
        assert response.status_code == 201, (stored, response.text)
        assert response.json()["content_type"] == stored, "stored as given"
    await make_available(registry)
    owner = registry.callers.owner
    async with httpx.AsyncClient() as direct:
        for number, (stored, sent) in enumerate(cases):
            path = f"/packages/model/versions/1.0.{number}/content"
            filename = f"model-1.0.{number}"
            for method in ("GET", "HEAD"):
                response = await registry.client.request(method, path, headers=owner)
                assert response.status_code == 200, (stored, method)
                assert response.headers["content-type"].split(";")[0] == sent, (stored, method)
                never_rendered(response, filename)
            redirect = await registry.client.get(path, params={"redirect": 1}, headers=owner)
            assert redirect.status_code == 307
            assert redirect.headers["x-content-type-options"] == "nosniff"
            fetched = await direct.get(redirect.headers["location"])
            assert fetched.status_code == 200
            assert fetched.headers["content-type"] == sent, ("S3 is asked for the same type", stored)
            assert fetched.headers["content-disposition"].startswith("attachment;"), stored
    cached = await registry.client.get(
        "/packages/model/versions/1.0.0/content",
        headers={**owner, "If-None-Match": f'"{hashlib.sha256(b"<script>alert(1)</script>").hexdigest()}"'},
    )
    assert cached.status_code == 304
    assert cached.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_empty_streamed_upload_is_refused_and_leaves_nothing(registry: Registry, chunked: bool) -> None:
    async def nothing() -> AsyncIterator[bytes]:
        yield b""

    response = await registry.client.put(
        "/packages/model/versions/1.0.0/content", content=nothing() if chunked else b"", headers=registry.callers.owner
    )
    assert response.status_code == 400, response.text
    assert "empty" in response.json()["detail"]
    assert await registry.objects() == []
    assert await registry.open_multipart_uploads() == []
    for table in ("packages", "versions", "spent_versions", "orphans", "uploads"):
        assert await registry.sql(f"SELECT count(*) FROM packages.{table}") == [(0,)], table  # noqa: S608
    assert (await registry.upload("model", "1.0.0", DATA)).status_code == 201, "the version was not spent"


async def test_head_reads_nothing_from_s3_and_only_real_downloads_count(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from package_service import downloads  # noqa: PLC0415 - patched here only

    opened: list[str | None] = []
    original = downloads.open_download

    async def counting_open(s3: Any, key: str, size: int, range_header: str | None) -> Any:
        opened.append(range_header)
        return await original(s3, key, size, range_header)

    monkeypatch.setattr(downloads, "open_download", counting_open)
    await publish(registry, "model", "1.0.0")
    await make_available(registry)
    owner, path, size = registry.callers.owner, "/packages/model/versions/1.0.0/content", len(DATA)

    head = await registry.client.head(path, headers=owner)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(size)
    assert head.headers["etag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert head.headers["accept-ranges"] == "bytes"
    ranged_head = await registry.client.head(path, headers={**owner, "Range": "bytes=10-19"})
    assert ranged_head.status_code == 206
    assert ranged_head.headers["content-range"] == f"bytes 10-19/{size}"
    assert ranged_head.headers["content-length"] == "10"
    beyond_head = await registry.client.head(path, headers={**owner, "Range": f"bytes={size}-"})
    assert beyond_head.status_code == 416
    redirect_head = await registry.client.head(path, params={"redirect": 1}, headers=owner)
    assert redirect_head.status_code == 200, "a HEAD hands out no URL: it would be a download nobody counted"
    assert opened == [], "a HEAD asks nothing of S3"

    assert (await registry.client.get(path, headers=owner)).status_code == 200
    assert (await registry.client.get(path, headers={**owner, "Range": "bytes=0-9"})).status_code == 206
    assert (await registry.client.get(path, params={"redirect": 1}, headers=owner)).status_code == 307
    assert (
        await registry.client.get(path, headers={**owner, "If-None-Match": head.headers["etag"]})
    ).status_code == 304
    assert (await registry.client.get(path, headers={**owner, "Range": f"bytes={size}-"})).status_code == 416
    assert opened == [None, "bytes=0-9", f"bytes={size}-"], "the 416 is decided before S3 is asked"

    assert await registry.sql("SELECT download_count FROM packages.versions") == [(3,)], "200, 206 and 307"
    assert await registry.sql("SELECT download_count FROM packages.packages") == [(3,)]

    async def recorded() -> list[Any]:
        return await registry.sql(
            "SELECT mode, count(*) FROM packages.transfers WHERE direction = 'download' GROUP BY mode ORDER BY mode"
        )

    async with asyncio.timeout(5):
        while await recorded() != [("redirect", 1), ("stream", 2)]:
            await asyncio.sleep(0.05)


async def test_a_download_waiting_for_s3_holds_no_lock(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edits of the package and the version do not wait for a download that waits for S3."""
    from package_service import downloads  # noqa: PLC0415 - patched here only

    reached, release = asyncio.Event(), asyncio.Event()
    original = downloads.open_download

    async def stalled_open(s3: Any, key: str, size: int, range_header: str | None) -> Any:
        reached.set()
        await release.wait()
        return await original(s3, key, size, range_header)

    monkeypatch.setattr(downloads, "open_download", stalled_open)
    await publish(registry, "model", "1.0.0")
    await make_available(registry)
    owner = registry.callers.owner
    download = asyncio.create_task(registry.client.get("/packages/model/versions/1.0.0/content", headers=owner))
    try:
        async with asyncio.timeout(10):
            await reached.wait()
        async with asyncio.timeout(5):
            edited = await registry.client.patch(
                "/packages/model/versions/1.0.0", json={"metadata": {"edited": True}}, headers=owner
            )
            assert edited.status_code == 200
            patched = await registry.client.patch("/packages/model", json={"description": "edited"}, headers=owner)
            assert patched.status_code == 200
            yanked = await registry.client.post(
                "/packages/model/versions/1.0.0/yank", json={"reason": "while downloading"}, headers=owner
            )
            assert yanked.status_code == 200
    finally:
        release.set()
    response = await download
    assert response.status_code == 200
    assert response.content == DATA
    assert await registry.sql("SELECT download_count, status FROM packages.versions") == [(1, "yanked")]


HUGE = "9" * 4301


@pytest.mark.parametrize(
    ("value", "status", "body"),
    [
        (f"bytes=0-{HUGE}", 206, DATA),  # beyond the end: up to the end
        (f"bytes=0-{'0' * 5000}", 206, DATA[:1]),  # leading zeros of any length
        (f"bytes=-{HUGE}", 206, DATA),  # a suffix longer than the body: the whole body
        (f"bytes={HUGE}-", 416, None),
        (f"bytes={HUGE}-{HUGE}", 416, None),
        (f"bytes={HUGE}-1", 200, DATA),  # last before first: ignored
        ("bytes=-0", 416, None),
        ("bytes=-1-2", 200, DATA),  # negative: malformed, ignored
        ("bytes=--1", 200, DATA),
        ("bytes=0-0,2-3", 200, DATA),  # several ranges: served whole
        ("bytes=0-0, -1", 200, DATA),
        ("bytes= 0-1", 206, DATA[:2]),
        ("bytes=0 - 1", 200, DATA),
        ("bytes=0-\t1", 200, DATA),  # whitespace inside a range (at its ends, HTTP itself strips it)
        ("bytes=\u0660-\u0661", 200, DATA),  # Arabic-Indic digits
        ("bytes=\u00b9-\u00b2", 200, DATA),  # superscript digits
        ("bytes=\uff10-\uff11", 200, DATA),  # fullwidth digits
        ("bytes=1e3-", 200, DATA),
        ("bytes=0x10-", 200, DATA),
        ("pages=0-1", 200, DATA),
    ],
)
async def test_any_range_header_is_answered_never_a_500(
    registry: Registry, value: str, status: int, body: bytes | None
) -> None:
    await publish(registry, "model", "1.0.0")
    await make_available(registry)
    headers = {**registry.callers.owner, "Range": value.encode()}
    for method in ("GET", "HEAD"):
        response = await registry.client.request(method, "/packages/model/versions/1.0.0/content", headers=headers)
        assert response.status_code == status, (method, response.text)
        if status == 416:
            assert response.headers["content-range"] == f"bytes */{len(DATA)}"
        elif method == "GET":
            assert response.content == body


METADATA_REFUSED = [
    b'{"metadata": {"a": NaN}}',
    b'{"metadata": {"a": Infinity}}',
    b'{"metadata": {"a": -Infinity}}',
    b'{"metadata": {"a": 1e400}}',
    b'{"metadata": {"a": -1e400}}',
    b'{"metadata": {"a": "\\ud800"}}',
    b'{"metadata": {"\\udfff": 1}}',
    b'{"metadata": {"a": "x\\u0000y"}}',
    b'{"metadata": {"\\u0000": 1}}',
    b'{"metadata": {"a": [{"b": ["\\u0000"]}]}}',
    b'{"metadata": {"a": ' + b"1" * 5000 + b"}}",
    b'{"metadata": {"a": "\xff"}}',
    b'{"metadata": []}',
    b'{"description": "a\\u0000b"}',
]


async def test_version_metadata_that_json_or_jsonb_cannot_hold_is_400(registry: Registry) -> None:
    await publish(registry, "model", "1.0.0")
    path, owner = "/packages/model/versions/1.0.0", registry.callers.owner
    kept = {
        "score": 0.93,
        "tiny": 5e-324,
        "name": "mod\u00e8le \U0001f600",
        "nested": [[{"deep": None}]],
        "big": 10**40,
    }
    assert (await registry.client.patch(path, json={"metadata": kept}, headers=owner)).status_code == 200
    for raw in METADATA_REFUSED:
        response = await registry.client.patch(path, content=raw, headers={**owner, "Content-Type": "application/json"})
        assert response.status_code == 400, (raw[:60], response.text)
    assert (await registry.client.get(path, headers=owner)).json()["metadata"] == kept, "unchanged"


# Absurd lengths: too large; lengths that are no number ("²" passes str.isdigit; a length beyond 64 bits
# the HTTP parser refuses): malformed, refused by the HTTP layer or the app.
@pytest.mark.parametrize(("length", "status"), [("9" * 19, 413), ("9" * 5000, 400), ("\xb2", 400)])
async def test_hostile_content_lengths_are_refused_not_500(registry: Registry, length: str, status: int) -> None:
    head = (
        f"PUT /packages/model/versions/1.0.0/content HTTP/1.1\r\nHost: depot\r\n"
        f"Authorization: {registry.callers.owner['Authorization']}\r\nContent-Length: {length}"
    )
    assert await raw_status(str(registry.client.base_url).rstrip("/"), head, DATA) == status
    assert await registry.objects() == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Filename": "mod\u00e8le \U0001f600.pt".encode()}, 201),
        ({"X-Filename": b"\xff\xfe.pt"}, 400),  # not UTF-8
        ({"X-Filename": "evil\u202etxt.exe".encode()}, 400),  # a bidirectional override
        ({"X-Filename": "zero\u200bwidth.pt".encode()}, 400),
        ({"X-Filename": "c1\u0085control.pt".encode()}, 400),
        ({"X-Filename": "line\u2028separator.pt".encode()}, 400),
        ({"Content-Type": "text/\u00e9".encode()}, 400),
    ],
)
async def test_hostile_upload_header_bytes_are_400_not_500(
    registry: Registry, headers: dict[str, Any], status: int
) -> None:
    response = await registry.client.put(
        "/packages/model/versions/1.0.0/content", content=DATA, headers={**registry.callers.owner, **headers}
    )
    assert response.status_code == status, response.text
    if status == 201:
        assert response.json()["filename"] == "mod\u00e8le \U0001f600.pt"
        await make_available(registry)
        download = await registry.client.get("/packages/model/versions/1.0.0/content", headers=registry.callers.owner)
        assert "filename*=UTF-8''mod%C3%A8le%20%F0%9F%98%80.pt" in download.headers["content-disposition"]
    else:
        assert await registry.objects() == []
