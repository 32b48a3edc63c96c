"""Presigned uploads against real PostgreSQL and S3: parts go straight to S3, then the version is committed.

The part URLs point at the real S3 server: a plain client PUTs the bytes there, as a user would.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from package_service import presigned
from package_service.storage import DEFAULT_PART_SIZE
from tests.conftest import S3_SESSION, Servers, s3_client_options
from tests.integration.packages.conftest import MAX_ARTIFACT_BYTES, Registry
from tests.integration.validator.conftest import Depot, open_depot

MIB = 1024 * 1024
PART = 5 * MIB
DATA = random.Random(7).randbytes(2 * PART + MIB)  # 11 MiB: parts of 5, 5 and 1 MiB
SMALL = b"small artifact\n" * 100


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_path(upload: dict[str, Any]) -> str:
    return f"/packages/{upload['package']}/versions/{upload['version']}/uploads/{upload['upload_id']}"


async def start(
    registry: Registry,
    name: str = "model",
    version: str = "1.0.0",
    data: bytes = DATA,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    body = {"size": len(data), "sha256": sha256(data), "part_size": PART, **fields}
    body = {field: value for field, value in body.items() if value is not None}  # None: left out
    return await registry.client.post(
        f"/packages/{name}/versions/{version}/uploads",
        json=body,
        headers=registry.callers.owner if headers is None else headers,
    )


async def started(registry: Registry, name: str = "model", version: str = "1.0.0", **kwargs: Any) -> dict[str, Any]:
    response = await start(registry, name, version, **kwargs)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def put_parts(upload: dict[str, Any], data: bytes, numbers: set[int] | None = None) -> dict[int, str]:
    """PUT the parts (all, or those numbered) straight to S3; their ETags by part number."""
    etags = {}
    async with httpx.AsyncClient() as s3:
        for part in upload["parts"]:
            number = part["part_number"]
            if numbers is not None and number not in numbers:
                continue
            offset = (number - 1) * upload["part_size"]
            response = await s3.put(part["url"], content=data[offset : offset + part["size"]])
            assert response.status_code == 200, response.text
            etags[number] = response.headers["etag"]
    return etags


async def complete(
    registry: Registry,
    upload: dict[str, Any],
    etags: dict[int, str],
    headers: dict[str, str] | None = None,
    sha256: object = None,
) -> httpx.Response:
    """Complete with these parts, and the sha256 when one is given."""
    parts = [{"part_number": number, "etag": etag} for number, etag in sorted(etags.items())]
    body: dict[str, Any] = {"parts": parts} if sha256 is None else {"parts": parts, "sha256": sha256}
    return await registry.client.post(
        f"{upload_path(upload)}/complete",
        json=body,
        headers=registry.callers.owner if headers is None else headers,
    )


async def status(registry: Registry, upload: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return await registry.client.get(
        upload_path(upload), headers=registry.callers.owner if headers is None else headers
    )


async def abort(registry: Registry, upload: dict[str, Any]) -> httpx.Response:
    return await registry.client.delete(upload_path(upload), headers=registry.callers.owner)


async def open_uploads(registry: Registry) -> int:
    [(count,)] = await registry.sql("SELECT count(*) FROM packages.uploads")
    return int(count)


async def abort_expired(registry: Registry) -> int:
    resources = registry.app.state.resources
    return await presigned.abort_expired(resources.sessions, resources.s3)


async def test_three_parts_straight_to_s3_make_a_pending_version_with_the_same_bytes(registry: Registry) -> None:
    upload = await started(registry, content_type="application/x-safetensors", filename="model.safetensors")
    assert upload["package"] == "model"
    assert upload["version"] == "1.0.0"
    assert upload["size"] == len(DATA)
    assert upload["sha256"] == sha256(DATA)
    assert upload["part_size"] == PART
    assert [(p["part_number"], p["size"]) for p in upload["parts"]] == [(1, PART), (2, PART), (3, MIB)]
    assert all(p["url"].startswith(registry.servers.s3.endpoint_url) for p in upload["parts"])
    assert upload["completed_parts"] == []
    expires_at = datetime.fromisoformat(upload["expires_at"])
    assert timedelta(hours=23) < expires_at - datetime.now(UTC) <= timedelta(hours=24)
    package = (await registry.client.get("/packages/model", headers=registry.callers.owner)).json()
    assert package["owner"] == "olivia", "starting the upload created the package, owned by the caller"
    key = f"versions/{upload['upload_id']}"
    assert await registry.open_multipart_uploads() == [key]
    assert await registry.sql("SELECT s3_key FROM packages.orphans") == [(key,)], "swept if abandoned"

    etags = await put_parts(upload, DATA)
    response = await complete(registry, upload, etags)
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["status"] == "pending"
    assert version["size"] == len(DATA)
    assert version["sha256"] == sha256(DATA)
    assert version["content_type"] == "application/x-safetensors"
    assert version["filename"] == "model.safetensors"
    assert version["uploaded_by"] == "olivia"

    assert await registry.sql("SELECT id::text, s3_key FROM packages.versions") == [(upload["upload_id"], key)]
    assert await open_uploads(registry) == 0
    assert await registry.sql("SELECT count(*) FROM packages.orphans") == [(0,)]
    assert await registry.open_multipart_uploads() == []
    assert await registry.objects() == [key]
    jobs = await registry.sql("SELECT queue, payload->>'sha256', payload->>'s3_key' FROM queue.jobs")
    assert jobs == [("validation", sha256(DATA), key)]
    transfers = await registry.sql("SELECT direction, mode, bytes, outcome FROM packages.transfers")
    assert transfers == [("upload", "presigned", len(DATA), "ok")]

    await registry.sql("UPDATE packages.versions SET status = 'available'")
    download = await registry.client.get("/packages/model/versions/1.0.0/content", headers=registry.callers.owner)
    assert download.status_code == 200
    assert download.content == DATA
    assert (await status(registry, upload)).status_code == 404, "a completed upload is gone"


async def test_an_upload_resumes_from_the_parts_s3_already_has(registry: Registry) -> None:
    upload = await started(registry)
    first = await put_parts(upload, DATA, {1, 3})
    response = await status(registry, upload)
    assert response.status_code == 200
    resumed = response.json()
    completed = {p["part_number"]: (p["etag"], p["size"]) for p in resumed["completed_parts"]}
    assert completed == {1: (first[1], PART), 3: (first[3], MIB)}
    assert [p["part_number"] for p in resumed["parts"]] == [1, 2, 3], "fresh URLs for every part"
    assert {key: resumed[key] for key in ("upload_id", "size", "sha256", "part_size", "expires_at")} == {
        key: upload[key] for key in ("upload_id", "size", "sha256", "part_size", "expires_at")
    }
    second = await put_parts(resumed, DATA, {2})
    response = await complete(registry, upload, first | second)
    assert response.status_code == 201, response.text
    await registry.sql("UPDATE packages.versions SET status = 'available'")
    download = await registry.client.get("/packages/model/versions/1.0.0/content", headers=registry.callers.owner)
    assert download.content == DATA


async def test_missing_parts_are_refused_and_the_upload_stays_open(registry: Registry) -> None:
    upload = await started(registry)
    etags = await put_parts(upload, DATA, {1, 2})
    listed_short = await complete(registry, upload, etags)
    assert listed_short.status_code == 400
    assert "Parts missing: 3" in listed_short.json()["detail"]
    never_uploaded = await complete(registry, upload, {**etags, 3: etags[2]})
    assert never_uploaded.status_code == 400
    assert "not uploaded: part 3" in never_uploaded.json()["detail"]
    assert (await status(registry, upload)).status_code == 200, "still open: the client can go on"
    assert len(await registry.open_multipart_uploads()) == 1
    etags |= await put_parts(upload, DATA, {3})
    assert (await complete(registry, upload, etags)).status_code == 201


MALFORMED_PARTS: list[list[dict[str, Any]]] = [
    [],
    [{"part_number": 1, "etag": "a"}, {"part_number": 1, "etag": "a"}],
    [{"part_number": 2, "etag": "a"}],
    [{"part_number": 1, "etag": ""}],
    [{"part_number": 1, "etag": "a" * 201}],
    [{"part_number": 0, "etag": "a"}],
    [{"part_number": "1", "etag": "a"}],
    [{"part_number": 1, "etag": "a", "size": 3}],
]


async def test_wrong_etags_and_malformed_completions_are_refused(registry: Registry) -> None:
    upload = await started(registry, data=SMALL, part_size=None)
    assert upload["part_size"] == DEFAULT_PART_SIZE, "the default part size"
    assert [p["size"] for p in upload["parts"]] == [len(SMALL)]
    etags = await put_parts(upload, SMALL)
    for parts in MALFORMED_PARTS:
        response = await registry.client.post(
            f"{upload_path(upload)}/complete", json={"parts": parts}, headers=registry.callers.owner
        )
        assert response.status_code == 400, parts
    wrong = await complete(registry, upload, {1: '"' + "0" * 32 + '"'})
    assert wrong.status_code == 400
    assert "ETag differs" in wrong.json()["detail"]
    assert (await status(registry, upload)).status_code == 200
    unquoted = {1: etags[1].strip('"')}
    assert (await complete(registry, upload, unquoted)).status_code == 201


async def test_parts_that_add_up_to_another_size_leave_nothing(registry: Registry) -> None:
    upload = await started(registry)
    short = DATA[: 2 * PART + MIB // 2]  # the last part has half its bytes
    etags = await put_parts(upload, DATA, {1, 2})
    async with httpx.AsyncClient() as s3:
        last = await s3.put(upload["parts"][2]["url"], content=short[2 * PART :])
    etags[3] = last.headers["etag"]
    response = await complete(registry, upload, etags)
    assert response.status_code == 400
    assert "not the 11534336 declared" in response.json()["detail"]
    assert await registry.objects() == []
    assert await registry.open_multipart_uploads() == []
    assert await open_uploads(registry) == 0
    assert await registry.sql("SELECT count(*) FROM packages.versions") == [(0,)]
    assert await registry.sql("SELECT count(*) FROM packages.orphans") == [(0,)]
    assert await registry.sql("SELECT outcome, bytes FROM packages.transfers") == [("failed", len(short))]
    assert (await status(registry, upload)).status_code == 404
    assert (await start(registry)).status_code == 201, "the version string was not spent"


async def test_one_open_upload_per_version(registry: Registry) -> None:
    first = await started(registry, version="1.0.0+build.1")
    for again in ("1.0.0", "v1.0.0", "1.0.0+build.2"):
        response = await start(registry, version=again, data=SMALL)
        assert response.status_code == 409, again
        assert "in progress" in response.json()["detail"]
    assert await registry.open_multipart_uploads() == [f"versions/{first['upload_id']}"], "the refused left none"
    streamed = await registry.upload("model", "1.0.0", SMALL)
    assert streamed.status_code == 409, "nor may a streamed upload take the version meanwhile"
    assert await registry.objects() == []
    racing = await asyncio.gather(start(registry, version="2.0.0"), start(registry, version="2.0.0"))
    assert sorted(r.status_code for r in racing) == [201, 409]
    assert len(await registry.open_multipart_uploads()) == 2, "the loser's multipart upload was aborted"
    assert (await start(registry, version="1.0.1")).status_code == 201, "other versions are free"


async def test_published_and_spent_versions_cannot_be_uploaded_again(registry: Registry) -> None:
    assert (await registry.upload("model", "1.0.0", SMALL)).status_code == 201
    assert (await start(registry, version="1.0.0")).status_code == 409
    deleted = await registry.client.delete("/packages/model/versions/1.0.0", headers=registry.callers.owner)
    assert deleted.status_code == 204
    assert (await start(registry, version="1.0.0")).status_code == 409, "a deleted version's string stays spent"

    upload = await started(registry, version="2.0.0", data=SMALL)
    assert (await complete(registry, upload, await put_parts(upload, SMALL))).status_code == 201
    assert (await start(registry, version="2.0.0", data=SMALL)).status_code == 409
    streamed = await registry.upload("model", "2.0.0", SMALL)
    assert streamed.status_code == 409, "a presigned upload spends the version string like a streamed one"
    assert await registry.open_multipart_uploads() == []


async def test_racing_completions_commit_once(registry: Registry) -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        upload = await started(registry, version=version, data=SMALL)
        etags = await put_parts(upload, SMALL)
        results = await asyncio.gather(*(complete(registry, upload, etags) for _ in range(3)))
        codes = sorted(r.status_code for r in results)
        assert codes[0] == 201, codes
        assert set(codes[1:]) <= {404, 409}, "the losers find the winner's claim, or no upload at all"
    await assert_consistent(registry, versions=3)


async def assert_consistent(registry: Registry, *, versions: int) -> None:
    """Every version has its object and nothing else is left: no open upload, multipart upload or orphan."""
    keys = await registry.sql("SELECT s3_key FROM packages.versions ORDER BY s3_key")
    assert len(keys) == versions
    assert sorted(await registry.objects()) == [key for (key,) in keys], "an object per version, and no other"
    assert await registry.open_multipart_uploads() == []
    assert await open_uploads(registry) == 0
    assert await registry.sql("SELECT count(*) FROM packages.orphans") == [(0,)]
    [(recorded,)] = await registry.sql("SELECT count(*) FROM packages.transfers WHERE outcome = 'ok'")
    assert recorded == versions


async def test_a_completion_racing_an_abort_has_one_winner(registry: Registry) -> None:
    won = {"completion": 0, "abort": 0}
    for round_ in range(6):
        upload = await started(registry, version=f"{round_}.0.0", data=SMALL)
        etags = await put_parts(upload, SMALL)
        if round_ % 2:  # each request is sent first in turn
            aborted, completed = await asyncio.gather(abort(registry, upload), complete(registry, upload, etags))
        else:
            completed, aborted = await asyncio.gather(complete(registry, upload, etags), abort(registry, upload))
        outcome = (completed.status_code, aborted.status_code)
        assert outcome in {(201, 409), (201, 404), (404, 204)}, outcome
        won["completion" if completed.status_code == 201 else "abort"] += 1
    await assert_consistent(registry, versions=won["completion"])
    [(aborts,)] = await registry.sql("SELECT count(*) FROM packages.transfers WHERE outcome = 'aborted'")
    assert aborts == won["abort"]


async def test_an_abort_racing_the_janitor_discards_once(registry: Registry) -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        upload = await started(registry, version=version, data=SMALL)
        await put_parts(upload, SMALL)
        await registry.sql("UPDATE packages.uploads SET expires_at = now() - interval '1 minute'")
        aborted, swept = await asyncio.gather(abort(registry, upload), abort_expired(registry))
        assert aborted.status_code == 404, "expired, whoever discards it"
        assert swept in {0, 1}
    assert await registry.sql("SELECT outcome, count(*) FROM packages.transfers GROUP BY outcome") == [("expired", 3)]
    await assert_consistent(registry, versions=0)


async def test_a_claimed_upload_is_left_to_its_completion_until_the_claim_is_abandoned(registry: Registry) -> None:
    """A completion that crashed after S3 assembled the parts leaves a claim and an object; once the
    claim is old enough to be abandoned, completing again commits that object."""
    upload = await started(registry, data=SMALL)
    etags = await put_parts(upload, SMALL)
    key = f"versions/{upload['upload_id']}"
    [(s3_upload_id,)] = await registry.sql("SELECT s3_upload_id FROM packages.uploads")
    async with S3_SESSION.client(**s3_client_options(registry.servers)) as s3:
        parts = [{"PartNumber": 1, "ETag": etags[1]}]
        await s3.complete_multipart_upload(
            Bucket=registry.bucket, Key=key, UploadId=s3_upload_id, MultipartUpload={"Parts": parts}
        )
    await registry.sql("UPDATE packages.uploads SET claimed_at = now(), expires_at = now() - interval '1 minute'")
    assert (await complete(registry, upload, etags)).status_code == 409, "a live claim: being completed"
    assert (await abort(registry, upload)).status_code == 409
    assert await abort_expired(registry) == 0, "the janitor leaves a claimed upload alone"
    assert await open_uploads(registry) == 1

    await registry.sql(
        "UPDATE packages.uploads SET claimed_at = now() - make_interval(secs => $1), expires_at = DEFAULT",
        presigned.CLAIM_SECONDS + 1,
    )
    completed = await complete(registry, upload, etags)
    assert completed.status_code == 201, completed.text
    await assert_consistent(registry, versions=1)


async def test_a_completion_refused_by_s3_gives_its_claim_back(registry: Registry) -> None:
    upload = await started(registry)
    etags = await put_parts(upload, DATA, {1, 2})
    refused = await complete(registry, upload, {**etags, 3: etags[2]})
    assert refused.status_code == 400
    assert await registry.sql("SELECT claimed_at FROM packages.uploads") == [(None,)]
    assert (await abort(registry, upload)).status_code == 204, "not left claimed"
    await assert_consistent(registry, versions=0)


async def test_aborting_drops_the_parts_and_frees_the_version(registry: Registry) -> None:
    upload = await started(registry)
    await put_parts(upload, DATA, {1})
    response = await registry.client.delete(upload_path(upload), headers=registry.callers.owner)
    assert response.status_code == 204
    assert await registry.open_multipart_uploads() == []
    assert await registry.objects() == []
    assert await open_uploads(registry) == 0
    assert await registry.sql("SELECT count(*) FROM packages.orphans") == [(0,)]
    assert await registry.sql("SELECT outcome FROM packages.transfers") == [("aborted",)]
    assert (await status(registry, upload)).status_code == 404
    again = await registry.client.delete(upload_path(upload), headers=registry.callers.owner)
    assert again.status_code == 404
    assert (await complete(registry, upload, {1: "x"})).status_code == 404
    assert (await start(registry)).status_code == 201, "the version may be uploaded afresh"


UPLOAD_ACCESS = {"owner": 200, "writer": 200, "admin": 200, "reader": 403, "stranger": 404, "service": 404}


async def test_access_to_uploads(registry: Registry) -> None:
    await registry.create("model", read_groups=["readers"], write_groups=["writers"])
    callers = registry.callers
    assert (await start(registry, data=SMALL, headers=callers.reader)).status_code == 403
    assert (await start(registry, data=SMALL, headers=callers.stranger)).status_code == 404
    assert (await start(registry, data=SMALL, headers={})).status_code == 401
    assert await registry.open_multipart_uploads() == []
    upload = await started(registry, data=SMALL, headers=callers.writer)
    for caller, expected in UPLOAD_ACCESS.items():
        assert (await status(registry, upload, getattr(callers, caller))).status_code == expected, caller
    assert (await status(registry, upload, {})).status_code == 401
    etags = await put_parts(upload, SMALL)
    for caller in ("reader", "stranger"):
        expected = UPLOAD_ACCESS[caller]
        assert (await complete(registry, upload, etags, getattr(callers, caller))).status_code == expected
        deleted = await registry.client.delete(upload_path(upload), headers=getattr(callers, caller))
        assert deleted.status_code == expected
    other_package = upload_path(upload).replace("/model/", "/other/")
    assert (await registry.client.get(other_package, headers=callers.admin)).status_code == 404
    other_version = upload_path(upload).replace("/1.0.0/", "/1.0.1/")
    assert (await registry.client.get(other_version, headers=callers.admin)).status_code == 404
    not_an_id = f"/packages/model/versions/1.0.0/uploads/{uuid.uuid4().hex[:8]}"
    assert (await registry.client.get(not_an_id, headers=callers.admin)).status_code == 404
    completed = await complete(registry, upload, etags, callers.writer)
    assert completed.status_code == 201
    assert completed.json()["uploaded_by"] == "wendy"


async def test_expired_uploads_are_aborted(registry: Registry) -> None:
    swept = await started(registry, version="1.0.0")
    await put_parts(swept, DATA, {1})
    on_completion = await started(registry, version="2.0.0", data=SMALL)
    etags = await put_parts(on_completion, SMALL)
    idle = await started(registry, version="3.0.0", data=SMALL)
    await started(registry, version="4.0.0", data=SMALL)  # not expired
    expire = "UPDATE packages.uploads SET expires_at = now() - interval '1 minute' WHERE version = $1"
    for upload in (swept, on_completion, idle):
        await registry.sql(expire, upload["version"])

    assert (await status(registry, swept)).status_code == 404, "expired: gone, even before the janitor runs"
    assert await abort_expired(registry) == 3
    remaining = await registry.sql("SELECT version FROM packages.uploads")
    assert remaining == [("4.0.0",)]
    assert len(await registry.open_multipart_uploads()) == 1
    assert (await status(registry, swept)).status_code == 404
    assert await abort_expired(registry) == 0
    outcomes = await registry.sql("SELECT outcome, count(*) FROM packages.transfers GROUP BY outcome")
    assert outcomes == [("expired", 3)]
    assert (await start(registry, version="1.0.0")).status_code == 201, "an expired upload spends nothing"

    late = await started(registry, version="5.0.0", data=SMALL)
    late_etags = await put_parts(late, SMALL)
    await registry.sql(expire, "5.0.0")
    assert (await complete(registry, late, late_etags)).status_code == 404, "found expired: aborted on the spot"
    assert await registry.sql("SELECT count(*) FROM packages.uploads WHERE version = '5.0.0'") == [(0,)]
    stale = await started(registry, version="6.0.0", data=SMALL)
    await registry.sql(expire, "6.0.0")
    fresh = await started(registry, version="6.0.0", data=SMALL)
    assert fresh["upload_id"] != stale["upload_id"], "an expired upload of the version is replaced"
    assert (await complete(registry, on_completion, etags)).status_code == 404, "swept: its ETags are worth nothing"
    open_ids = await registry.sql("SELECT id::text FROM packages.uploads")
    assert sorted(await registry.open_multipart_uploads()) == sorted(f"versions/{id_}" for (id_,) in open_ids)
    assert await registry.objects() == []


async def test_a_tampered_part_url_is_refused_by_s3(registry: Registry) -> None:
    upload = await started(registry)
    url = upload["parts"][0]["url"]
    assert "partNumber=1&" in url
    async with httpx.AsyncClient() as s3:
        tampered = await s3.put(url.replace("partNumber=1&", "partNumber=2&"), content=DATA[:PART])
        assert tampered.status_code == 403
        longer = await s3.put(url.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200"), content=DATA[:PART])
        assert longer.status_code == 403
    assert (await status(registry, upload)).json()["completed_parts"] == []


INVALID_STARTS: list[tuple[dict[str, Any], int]] = [
    ({"size": 0}, 400),
    ({"size": MAX_ARTIFACT_BYTES + 1}, 413),
    ({"size": "5"}, 400),
    ({"size": True}, 400),
    ({"sha256": "abc"}, 400),
    ({"part_size": 5 * MIB - 1}, 400),
    ({"part_size": 5 * 1024**3 + 1}, 400),
    ({"filename": "../etc/passwd"}, 400),
    ({"filename": ".."}, 400),
    ({"filename": "x" * 256}, 400),
    ({"content_type": "\x7f"}, 400),
    ({"parts": []}, 400),
]


async def test_invalid_starts_are_refused_before_anything_is_created(registry: Registry) -> None:
    for fields, expected in INVALID_STARTS:
        body = {"size": len(SMALL), "sha256": sha256(SMALL), **fields}
        response = await registry.client.post(
            "/packages/model/versions/1.0.0/uploads", json=body, headers=registry.callers.owner
        )
        assert response.status_code == expected, (fields, response.text)
    for version in ("1.0", "latest", "01.0.0"):
        assert (await start(registry, version=version, data=SMALL)).status_code == 400, version
    assert (await start(registry, name="health", data=SMALL)).status_code == 400, "a reserved name"
    assert (await start(registry, name="-bad", data=SMALL)).status_code == 400
    assert await registry.sql("SELECT count(*) FROM packages.packages") == [(0,)]
    assert await registry.open_multipart_uploads() == []


async def test_the_upload_operations_are_in_the_openapi_document(registry: Registry) -> None:
    document = (await registry.client.get("/packages/openapi.json")).json()
    base = "/packages/{name}/versions/{version}/uploads"
    assert set(document["paths"][base]) == {"post"}
    assert set(document["paths"][base + "/{upload_id}"]) == {"get", "delete"}
    assert set(document["paths"][base + "/{upload_id}/complete"]) == {"post"}
    start_op = document["paths"][base]["post"]
    assert start_op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateUpload"
    }
    assert start_op["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Upload"
    }
    schemas = document["components"]["schemas"]
    assert set(schemas["Upload"]["properties"]) == {
        "upload_id", "package", "version", "size", "sha256", "part_size", "expires_at", "parts", "completed_parts",
    }  # fmt: skip
    assert set(schemas["CreateUpload"]["properties"]) == {"size", "sha256", "part_size", "content_type", "filename"}
    assert schemas["CreateUpload"]["required"] == ["size"], "the sha256 may wait for the completion"
    assert set(schemas["CompleteUpload"]["properties"]) == {"parts", "sha256"}
    assert schemas["CompleteUpload"]["required"] == ["parts"]
    assert {"type": "null"} in schemas["Upload"]["properties"]["sha256"]["anyOf"], "null until declared"


async def test_deleting_a_package_aborts_its_open_uploads_in_s3(registry: Registry) -> None:
    upload = await started(registry)
    await put_parts(upload, DATA, {1})
    other = await started(registry, name="other", data=SMALL)
    deleted = await registry.client.delete("/packages/model", headers=registry.callers.owner)
    assert deleted.status_code == 204
    assert await registry.open_multipart_uploads() == [f"versions/{other['upload_id']}"], "only that package's"
    async with httpx.AsyncClient() as s3:
        late = await s3.put(upload["parts"][1]["url"], content=DATA[PART : 2 * PART])
    assert late.status_code == 404, "a part URL of the deleted package's upload takes no more bytes"
    assert "NoSuchUpload" in late.text
    assert await registry.objects() == []
    assert await registry.sql("SELECT s3_key FROM packages.orphans") == [(f"versions/{other['upload_id']}",)]
    assert await registry.sql("SELECT version, outcome FROM packages.transfers") == [("1.0.0", "aborted")]


async def test_hostile_etags_are_400_never_500(registry: Registry) -> None:
    upload = await started(registry, data=SMALL)
    etags = await put_parts(upload, SMALL)
    for etag in ("\u0000", "a\u0000b", "\u00e9", "\ufffe", " ", '"<x>&]]>"', "\x1f"):
        response = await complete(registry, upload, {1: etag})
        assert response.status_code == 400, (etag, response.text)
    assert (await complete(registry, upload, etags)).status_code == 201, "the upload stayed open"


# The sha256, declared when the upload starts or when it completes


async def test_the_sha256_may_be_declared_at_completion(registry: Registry) -> None:
    upload = await started(registry, sha256=None)
    assert upload["sha256"] is None, "not declared yet"
    assert (await status(registry, upload)).json()["sha256"] is None
    etags = await put_parts(upload, DATA)
    response = await complete(registry, upload, etags, sha256=sha256(DATA).upper())
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["status"] == "pending"
    assert version["sha256"] == sha256(DATA), "stored lower-case"
    jobs = await registry.sql("SELECT payload->>'sha256' FROM queue.jobs WHERE queue = 'validation'")
    assert jobs == [(sha256(DATA),)], "validation checks the sha256 declared at completion"
    await registry.sql("UPDATE packages.versions SET status = 'available'")
    download = await registry.client.get("/packages/model/versions/1.0.0/content", headers=registry.callers.owner)
    assert download.headers["x-checksum-sha256"] == sha256(DATA)
    assert download.content == DATA


async def test_a_completion_with_no_sha256_declared_anywhere_is_refused_and_the_upload_stays_open(
    registry: Registry,
) -> None:
    upload = await started(registry, data=SMALL, sha256=None)
    etags = await put_parts(upload, SMALL)
    refused = await complete(registry, upload, etags)
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert "No sha256 was declared" in refused.json()["detail"]
    assert (await status(registry, upload)).status_code == 200, "still open"
    assert len(await registry.open_multipart_uploads()) == 1, "S3 was not asked to complete it"
    assert await registry.sql("SELECT count(*) FROM packages.versions") == [(0,)]
    completed = await complete(registry, upload, etags, sha256=sha256(SMALL))
    assert completed.status_code == 201, completed.text
    assert completed.json()["sha256"] == sha256(SMALL)


async def test_two_different_sha256s_are_refused_and_the_upload_stays_open(registry: Registry) -> None:
    upload = await started(registry, data=SMALL)
    etags = await put_parts(upload, SMALL)
    refused = await complete(registry, upload, etags, sha256=sha256(b"other bytes"))
    assert refused.status_code == 400
    assert "differs from the one declared" in refused.json()["detail"]
    assert (await status(registry, upload)).status_code == 200, "still open"
    assert len(await registry.open_multipart_uploads()) == 1
    assert await registry.sql("SELECT count(*) FROM packages.versions") == [(0,)]
    completed = await complete(registry, upload, etags, sha256=sha256(SMALL).upper())
    assert completed.status_code == 201, "the same sha256, in another case, is the same"
    assert completed.json()["sha256"] == sha256(SMALL)


async def test_a_malformed_sha256_at_completion_is_refused_and_the_upload_stays_open(registry: Registry) -> None:
    upload = await started(registry, data=SMALL, sha256=None)
    etags = await put_parts(upload, SMALL)
    good = sha256(SMALL)
    for bad in ("", "abc", good[:63], good + "0", "g" * 64, " " + good[1:], 12, ["a"]):
        response = await complete(registry, upload, etags, sha256=bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["errors"][0]["loc"] == ["body", "sha256"], bad
    assert (await status(registry, upload)).status_code == 200
    assert (await complete(registry, upload, etags, sha256=good)).status_code == 201


@pytest.fixture
async def depot(servers: Servers, database_url: str, bucket: str, tmp_path: Path) -> AsyncIterator[Depot]:
    """auth_service, package_service and a validator: what validation makes of the declared sha256."""
    async with open_depot(servers, database_url, bucket, tmp_path) as opened:
        yield opened


async def upload_declaring_at_completion(depot: Depot, data: bytes, declared: str) -> httpx.Response:
    """Start without a sha256, send `data`, complete declaring `declared`."""
    base = "/packages/pkg/versions/1.0.0/uploads"
    begun = await depot.packages.post(base, json={"size": len(data)}, headers=depot.callers.owner)
    assert begun.status_code == 201, begun.text
    upload = begun.json()
    async with httpx.AsyncClient() as s3:
        sent = await s3.put(upload["parts"][0]["url"], content=data)
    assert sent.status_code == 200
    body = {"parts": [{"part_number": 1, "etag": sent.headers["etag"]}], "sha256": declared}
    return await depot.packages.post(f"{base}/{upload['upload_id']}/complete", json=body, headers=depot.callers.owner)


async def test_a_sha256_declared_at_completion_passes_validation(depot: Depot) -> None:
    data = b"weights declared at the end" * 1000
    completed = await upload_declaring_at_completion(depot, data, sha256(data))
    assert completed.status_code == 201, completed.text
    assert completed.json()["status"] == "pending"
    decided = await depot.decided("pkg", "1.0.0")
    assert decided["status"] == "available", decided["validation"]
    assert decided["sha256"] == sha256(data)


async def test_a_wrong_sha256_declared_at_completion_rejects_the_version(depot: Depot) -> None:
    data = b"the real bytes" * 1000
    completed = await upload_declaring_at_completion(depot, data, sha256(b"something else"))
    assert completed.status_code == 201, completed.text
    decided = await depot.decided("pkg", "1.0.0")
    assert decided["status"] == "rejected"
    failed = [check["id"] for check in decided["validation"]["checks"] if check["status"] == "fail"]
    assert failed == ["sha256"]
