"""package_service.storage against a real S3 server: streaming uploads, ranged downloads, cleanup."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Coroutine, Iterable
from datetime import timedelta
from typing import Any

import aioboto3
import psutil
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError
from starlette.requests import ClientDisconnect

from common.errors import BadRequest, PayloadTooLarge, RangeNotSatisfiable
from common.s3 import S3, open_s3
from common.settings import S3Settings
from devstack.processes import free_port
from package_service.storage import (
    MiB,
    StoredObject,
    abort_orphan_uploads,
    delete_object,
    open_download,
    upload_stream,
)
from tests.conftest import Servers, s3_client_options
from tests.helpers import WAIT_SECONDS, eventually

PART = 5 * MiB
_spawned: set[asyncio.Task[None]] = set()


def spawn(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """What the app's `Resources.spawn` does, for `upload_stream` outside an app: tasks kept alive."""
    task = asyncio.create_task(work, name=name)
    _spawned.add(task)
    task.add_done_callback(_spawned.discard)
    return task


KEY = "versions/0190f1d2-0000-7000-8000-000000000001"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def settings_for(servers: Servers, bucket: str) -> S3Settings:
    return S3Settings(
        s3_endpoint_url=servers.s3.endpoint_url,
        s3_access_key_id=servers.s3.credentials.access_key,
        s3_secret_access_key=servers.s3.credentials.secret_key,
        s3_bucket=bucket,
    )


@pytest.fixture
async def s3(servers: Servers, bucket: str) -> AsyncIterator[S3]:
    async with open_s3(settings_for(servers, bucket)) as opened:
        yield opened


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def pieces(data: bytes, sizes: Iterable[int]) -> AsyncIterator[bytes]:
    """`data` in chunks of the given sizes, repeated as needed."""
    sizes = list(sizes)
    offset = 0
    index = 0
    while offset < len(data):
        size = sizes[index % len(sizes)]
        yield data[offset : offset + size]
        offset += size
        index += 1
        await asyncio.sleep(0)


async def read_object(s3: S3, key: str) -> bytes:
    response = await s3.client.get_object(Bucket=s3.bucket, Key=key)
    async with response["Body"] as body:
        return await body.read()


async def assert_nothing_stored(s3: S3) -> None:
    """No object and no open multipart upload in the bucket."""
    objects = await s3.client.list_objects_v2(Bucket=s3.bucket)
    assert objects.get("Contents", []) == []
    uploads = await s3.client.list_multipart_uploads(Bucket=s3.bucket)
    assert uploads.get("Uploads", []) == []


class CountingClient:
    """Passes every call to the real client; watches `upload_part` (and can hold it at a gate)."""

    def __init__(self, client: Any, hold_part: int | None = None) -> None:
        self._client = client
        self._hold_part = hold_part
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.completed_bytes = 0
        self.cancelled: list[int] = []
        self.held = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def upload_part(self, **kwargs: Any) -> Any:
        number = kwargs["PartNumber"]
        self.started.append(number)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if number == self._hold_part:
                self.held.set()
                await asyncio.Event().wait()
            # Slow S3 down a little so that parts overlap.
            await asyncio.sleep(0.05)
            response = await self._client.upload_part(**kwargs)
        except asyncio.CancelledError:
            self.cancelled.append(number)
            raise
        finally:
            self.running -= 1
        self.completed_bytes += kwargs["Body"].getbuffer().nbytes
        return response


def counting(s3: S3, hold_part: int | None = None) -> tuple[S3, CountingClient]:
    client = CountingClient(s3.client, hold_part)
    return S3(client=client, presigner=s3.presigner, bucket=s3.bucket), client  # type: ignore[arg-type]


# Uploads


async def test_a_small_body_is_stored_with_one_put(s3: S3) -> None:
    data = payload(1000)
    watched, client = counting(s3)

    stored = await upload_stream(
        watched, KEY, pieces(data, [300]), spawn=spawn, max_bytes=1000, content_type="application/zip"
    )

    assert stored == StoredObject(KEY, 1000, hashlib.sha256(data).hexdigest())
    assert client.started == []  # no multipart upload
    assert await read_object(s3, KEY) == data
    head = await s3.client.head_object(Bucket=s3.bucket, Key=KEY)
    assert head["ContentLength"] == 1000
    assert head["ContentType"] == "application/zip"


async def test_a_large_body_is_sent_in_parts_whatever_the_chunk_sizes(s3: S3) -> None:
    data = payload(PART * 3 + PART // 2)
    watched, client = counting(s3)

    # Chunks straddle part boundaries, and one is larger than a part.
    chunks = pieces(data, [700 * 1024, 1, 12_345, 6 * MiB, 1])
    stored = await upload_stream(watched, KEY, chunks, spawn=spawn, max_bytes=len(data), part_size=PART)

    assert stored == StoredObject(KEY, len(data), hashlib.sha256(data).hexdigest())
    assert sorted(client.started) == [1, 2, 3, 4]
    assert client.completed_bytes == len(data)
    assert await read_object(s3, KEY) == data
    await s3.client.delete_object(Bucket=s3.bucket, Key=KEY)
    await assert_nothing_stored(s3)


async def test_a_body_of_whole_parts_has_no_empty_last_part(s3: S3) -> None:
    data = payload(PART * 2)
    watched, client = counting(s3)

    stored = await upload_stream(watched, KEY, pieces(data, [MiB]), spawn=spawn, max_bytes=len(data), part_size=PART)

    assert stored == StoredObject(KEY, len(data), hashlib.sha256(data).hexdigest())
    assert sorted(client.started) == [1, 2]
    assert await read_object(s3, KEY) == data


async def test_an_empty_body_is_an_empty_object(s3: S3) -> None:
    stored = await upload_stream(s3, KEY, pieces(b"", [1]), spawn=spawn, max_bytes=0)

    assert stored == StoredObject(KEY, 0, EMPTY_SHA256)
    assert await read_object(s3, KEY) == b""


async def test_an_empty_body_is_refused_when_not_allowed(s3: S3) -> None:
    with pytest.raises(BadRequest, match="empty"):
        await upload_stream(s3, KEY, pieces(b"", [1]), spawn=spawn, max_bytes=10, allow_empty=False)
    await assert_nothing_stored(s3)
    stored = await upload_stream(s3, KEY, pieces(b"x", [1]), spawn=spawn, max_bytes=10, allow_empty=False)
    assert stored.size == 1


async def test_a_body_of_exactly_max_bytes_is_accepted(s3: S3) -> None:
    data = payload(PART + 1)
    stored = await upload_stream(s3, KEY, pieces(data, [MiB]), spawn=spawn, max_bytes=PART + 1, part_size=PART)
    assert stored.size == PART + 1


async def test_a_body_over_max_bytes_stops_the_upload(s3: S3) -> None:
    data = payload(PART * 3)
    read = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal read
        async for chunk in pieces(data, [MiB]):
            read += len(chunk)
            yield chunk

    with pytest.raises(PayloadTooLarge):
        await upload_stream(s3, KEY, counted(), spawn=spawn, max_bytes=2 * PART + 100, part_size=PART)

    assert read == 2 * PART + MiB  # stopped at the first chunk over the limit
    await assert_nothing_stored(s3)


async def test_a_small_body_over_max_bytes_is_refused(s3: S3) -> None:
    with pytest.raises(PayloadTooLarge):
        await upload_stream(s3, KEY, pieces(payload(101), [50]), spawn=spawn, max_bytes=100)
    await assert_nothing_stored(s3)


async def test_a_client_disconnect_aborts_the_upload(s3: S3) -> None:
    data = payload(12 * MiB)

    async def disconnecting() -> AsyncIterator[bytes]:
        async for chunk in pieces(data, [700 * 1024]):
            yield chunk
        raise ClientDisconnect

    watched, client = counting(s3)
    with pytest.raises(ClientDisconnect):
        await upload_stream(watched, KEY, disconnecting(), spawn=spawn, max_bytes=100 * MiB, part_size=PART)

    assert sorted(client.started) == [1, 2]  # parts were uploaded before the disconnect
    assert client.running == 0
    await assert_nothing_stored(s3)


async def test_cancellation_cancels_running_parts_and_aborts(s3: S3) -> None:
    data = payload(12 * MiB)
    all_read = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        async for chunk in pieces(data, [MiB]):
            yield chunk
        all_read.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b""  # pragma: no cover

    watched, client = counting(s3, hold_part=2)
    task = asyncio.create_task(
        upload_stream(watched, KEY, stalling(), spawn=spawn, max_bytes=100 * MiB, part_size=PART)
    )
    async with asyncio.timeout(WAIT_SECONDS):
        await all_read.wait()
        await client.held.wait()
    await eventually(lambda: client.completed_bytes >= PART, interval=0.01)  # part 1 is in S3, part 2 hangs
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task

    assert client.cancelled == [2]
    assert client.running == 0
    await assert_nothing_stored(s3)


@pytest.mark.parametrize(("operation", "size"), [("put_object", 10), ("complete_multipart_upload", PART + 10)])
async def test_cancelling_a_commit_whose_answer_is_lost_leaves_no_object(s3: S3, operation: str, size: int) -> None:
    committed = asyncio.Event()

    class LosingAnswers(CountingClient):
        def __getattr__(self, name: str) -> Any:
            real = getattr(self._client, name)
            if name != operation:
                return real

            async def call(**kwargs: Any) -> Any:
                await real(**kwargs)  # S3 stores the object, but its answer never arrives
                committed.set()
                await asyncio.Event().wait()

            return call

    watched = S3(client=LosingAnswers(s3.client), presigner=s3.presigner, bucket=s3.bucket)  # type: ignore[arg-type]
    task = asyncio.create_task(
        upload_stream(watched, KEY, pieces(payload(size), [MiB]), spawn=spawn, max_bytes=size, part_size=PART)
    )
    async with asyncio.timeout(WAIT_SECONDS):
        await committed.wait()
    assert (await s3.client.list_objects_v2(Bucket=s3.bucket)).get("KeyCount") == 1
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_nothing_stored(s3)


async def test_the_cleanup_survives_a_second_cancellation(s3: S3) -> None:
    aborting = asyncio.Event()

    class SlowAbort(CountingClient):
        async def abort_multipart_upload(self, **kwargs: Any) -> Any:
            aborting.set()
            await asyncio.sleep(0.3)
            return await self._client.abort_multipart_upload(**kwargs)

    async def stalling() -> AsyncIterator[bytes]:
        async for chunk in pieces(payload(PART + 1), [MiB]):
            yield chunk
        await asyncio.Event().wait()
        yield b""  # pragma: no cover

    watched = S3(client=SlowAbort(s3.client), presigner=s3.presigner, bucket=s3.bucket)  # type: ignore[arg-type]
    task = asyncio.create_task(
        upload_stream(watched, KEY, stalling(), spawn=spawn, max_bytes=100 * MiB, part_size=PART)
    )

    async def uploads() -> list[Any]:
        return list((await s3.client.list_multipart_uploads(Bucket=s3.bucket)).get("Uploads", []))

    async def no_uploads() -> bool:
        return not await uploads()

    await eventually(uploads, interval=0.01)
    async with asyncio.timeout(WAIT_SECONDS):
        task.cancel()
        await aborting.wait()
        task.cancel()  # impatient: cancelled again while aborting
        with pytest.raises(asyncio.CancelledError):
            await task
    await eventually(no_uploads, interval=0.02)  # the abort finishes in the background
    await assert_nothing_stored(s3)


async def test_a_failing_part_aborts_the_upload(s3: S3) -> None:
    class Failing(CountingClient):
        async def upload_part(self, **kwargs: Any) -> Any:
            if kwargs["PartNumber"] == 2:
                raise ConnectionResetError("S3 went away")
            return await super().upload_part(**kwargs)

    client = Failing(s3.client)
    watched = S3(client=client, presigner=s3.presigner, bucket=s3.bucket)  # type: ignore[arg-type]
    with pytest.raises(ConnectionResetError):
        await upload_stream(
            watched, KEY, pieces(payload(4 * PART), [MiB]), spawn=spawn, max_bytes=100 * MiB, part_size=PART
        )

    assert client.running == 0
    await assert_nothing_stored(s3)


async def test_a_wrong_checksum_stores_nothing(s3: S3) -> None:
    data = payload(PART * 2 + 10)
    wrong = hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(BadRequest) as raised:
        await upload_stream(
            s3, KEY, pieces(data, [MiB]), spawn=spawn, max_bytes=len(data), part_size=PART, expected_sha256=wrong
        )

    assert raised.value.detail == "The body's SHA-256 does not match X-Checksum-Sha256."
    await assert_nothing_stored(s3)

    with pytest.raises(BadRequest):
        await upload_stream(s3, KEY, pieces(data[:10], [3]), spawn=spawn, max_bytes=len(data), expected_sha256=wrong)
    await assert_nothing_stored(s3)


async def test_a_right_checksum_in_any_case_is_accepted(s3: S3) -> None:
    data = payload(PART + 10)
    expected = hashlib.sha256(data).hexdigest()

    stored = await upload_stream(
        s3, KEY, pieces(data, [MiB]), spawn=spawn, max_bytes=len(data), part_size=PART, expected_sha256=expected.upper()
    )
    assert stored.sha256 == expected

    small = await upload_stream(
        s3,
        "small",
        pieces(data[:10], [3]),
        spawn=spawn,
        max_bytes=10,
        expected_sha256=hashlib.sha256(data[:10]).hexdigest().upper(),
    )
    assert small.size == 10
    assert await read_object(s3, KEY) == data


async def test_a_checksum_that_is_not_hex_is_refused_before_reading(s3: S3) -> None:
    async def untouched() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    for bad in ("abc", "g" * 64, "0" * 63):
        with pytest.raises(BadRequest):
            await upload_stream(s3, KEY, untouched(), spawn=spawn, max_bytes=10, expected_sha256=bad)
    await assert_nothing_stored(s3)


async def test_parts_below_the_s3_minimum_are_refused(s3: S3) -> None:
    with pytest.raises(ValueError, match="part_size"):
        await upload_stream(s3, KEY, pieces(b"x", [1]), spawn=spawn, max_bytes=10, part_size=PART - 1)


@pytest.mark.parametrize("max_in_flight", [1, 2, 3])
async def test_parts_in_flight_are_bounded_and_reading_waits_for_them(s3: S3, max_in_flight: int) -> None:
    data = payload(PART * 6 + 1)
    watched, client = counting(s3)
    buffered_peak = 0
    sent = 0

    async def watched_body() -> AsyncIterator[bytes]:
        nonlocal buffered_peak, sent
        async for chunk in pieces(data, [MiB]):
            sent += len(chunk)
            # What the upload holds: read but not yet in S3.
            buffered_peak = max(buffered_peak, sent - client.completed_bytes)
            yield chunk

    stored = await upload_stream(
        watched, KEY, watched_body(), spawn=spawn, max_bytes=len(data), part_size=PART, max_in_flight=max_in_flight
    )

    assert stored.size == len(data)
    assert client.peak == max_in_flight
    # Parts in flight, the part being filled, and the chunk that is being cut.
    assert buffered_peak <= (max_in_flight + 1) * PART + MiB
    assert await read_object(s3, KEY) == data


@pytest.mark.slow  # 200 MiB to S3, memory sampled all along
async def test_memory_stays_bounded_for_a_large_body(s3: S3) -> None:
    chunk = payload(MiB)
    total = 200 * MiB
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // MiB):
            yield chunk  # the same object each time: only the upload's own buffers can grow

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        stored = await upload_stream(s3, KEY, body(), spawn=spawn, max_bytes=total, part_size=8 * MiB, max_in_flight=2)
    finally:
        sampler.cancel()
    peak = max(peak, process.memory_info().rss)

    assert stored.size == total
    assert stored.sha256 == hashlib.sha256(chunk * 200).hexdigest()
    growth = (peak - baseline) / MiB
    print(f"RSS baseline {baseline / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB, growth {growth:.1f} MiB")
    assert growth < 80
    head = await s3.client.head_object(Bucket=s3.bucket, Key=KEY)
    assert head["ContentLength"] == total


@pytest.mark.parametrize("size", [4, PART + 1])
async def test_an_unreachable_s3_raises_a_connection_error(servers: Servers, size: int) -> None:
    options = s3_client_options(servers) | {
        "endpoint_url": f"http://127.0.0.1:{free_port()}",
        "config": Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    }
    async with aioboto3.Session().client(**options) as client:
        dead = S3(client=client, presigner=client, bucket="depot")
        with pytest.raises(EndpointConnectionError):
            await upload_stream(dead, KEY, pieces(payload(size), [MiB]), spawn=spawn, max_bytes=size, part_size=PART)


# Downloads

SIZE = 1000
DATA = payload(SIZE, seed=7)


@pytest.fixture
async def stored(s3: S3) -> S3:
    await upload_stream(s3, KEY, pieces(DATA, [SIZE]), spawn=spawn, max_bytes=SIZE)
    return s3


async def download(s3: S3, range_header: str | None, size: int = SIZE) -> tuple[int, dict[str, str], bytes]:
    opened = await open_download(s3, KEY, size, range_header)
    try:
        return opened.status, opened.headers, b"".join([chunk async for chunk in opened.body])
    finally:
        await opened.close()


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=-1", 999, 999),
        ("bytes=5-", 5, 999),
        ("bytes=999-999", 999, 999),
        ("bytes=100-199", 100, 199),
        ("bytes=990-5000", 990, 999),
        ("bytes=-5000", 0, 999),
    ],
)
async def test_a_range_is_served_as_partial_content(stored: S3, header: str, start: int, end: int) -> None:
    status, headers, body = await download(stored, header)

    assert status == 206
    assert body == DATA[start : end + 1]
    assert headers == {
        "Accept-Ranges": "bytes",
        "Content-Length": str(end - start + 1),
        "Content-Range": f"bytes {start}-{end}/{SIZE}",
    }


@pytest.mark.parametrize("header", [None, "bytes=0-1,5-6", "bytes=abc", "bytes=9-3", "lines=1-2"])
async def test_no_or_an_ignored_range_serves_the_whole_body(stored: S3, header: str | None) -> None:
    status, headers, body = await download(stored, header)

    assert status == 200
    assert body == DATA
    assert headers == {"Accept-Ranges": "bytes", "Content-Length": str(SIZE)}


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1000", "bytes=-0"])
async def test_a_range_past_the_end_is_not_satisfiable(stored: S3, header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        await open_download(stored, KEY, SIZE, header)
    assert raised.value.status == 416
    assert raised.value.headers["Content-Range"] == f"bytes */{SIZE}"


async def test_an_empty_object_downloads_whole_and_refuses_ranges(s3: S3) -> None:
    await upload_stream(s3, KEY, pieces(b"", [1]), spawn=spawn, max_bytes=0)

    assert await download(s3, None, size=0) == (200, {"Accept-Ranges": "bytes", "Content-Length": "0"}, b"")
    with pytest.raises(RangeNotSatisfiable):
        await open_download(s3, KEY, 0, "bytes=0-")


async def test_a_large_body_is_relayed_in_bounded_chunks(s3: S3) -> None:
    data = payload(3 * MiB + 5)
    await upload_stream(s3, KEY, pieces(data, [MiB]), spawn=spawn, max_bytes=len(data))

    opened = await open_download(s3, KEY, len(data), "bytes=1-")
    try:
        chunks = [chunk async for chunk in opened.body]
    finally:
        await opened.close()

    assert opened.status == 206
    assert b"".join(chunks) == data[1:]
    assert len(chunks) > 1
    assert max(map(len, chunks)) <= MiB


async def test_downloads_closed_early_release_their_connections(s3: S3) -> None:
    data = payload(3 * MiB)
    await upload_stream(s3, KEY, pieces(data, [MiB]), spawn=spawn, max_bytes=len(data))

    # More than the client's 50 pooled connections: a leak would make a later call wait forever.
    async with asyncio.timeout(2 * WAIT_SECONDS):
        for round_ in range(60):
            opened = await open_download(s3, KEY, len(data), None)
            if round_ % 2:
                assert await anext(opened.body)
            await opened.close()
            await opened.close()  # closing twice is harmless

        await s3.client.head_object(Bucket=s3.bucket, Key=KEY)
        assert (await download(s3, "bytes=-3", size=len(data)))[2] == data[-3:]


async def test_delete_object_removes_the_bytes(stored: S3) -> None:
    await delete_object(stored, KEY)
    await delete_object(stored, KEY)  # already gone: still fine

    with pytest.raises(ClientError):
        await stored.client.head_object(Bucket=stored.bucket, Key=KEY)


async def test_abort_orphan_uploads_aborts_old_uploads_under_the_prefix(s3: S3) -> None:
    orphan = await s3.client.create_multipart_upload(Bucket=s3.bucket, Key="versions/orphan")
    other = await s3.client.create_multipart_upload(Bucket=s3.bucket, Key="elsewhere/upload")
    await asyncio.sleep(0.01)

    assert await abort_orphan_uploads(s3, "versions/", timedelta(hours=1)) == 0  # too recent
    assert await abort_orphan_uploads(s3, "versions/", timedelta(0)) == 1

    remaining = (await s3.client.list_multipart_uploads(Bucket=s3.bucket)).get("Uploads", [])
    assert [(u.get("Key"), u.get("UploadId")) for u in remaining] == [("elsewhere/upload", other["UploadId"])]
    assert orphan["UploadId"] not in {u.get("UploadId") for u in remaining}
    assert await abort_orphan_uploads(s3, "versions/", timedelta(0)) == 0

    assert await abort_orphan_uploads(s3, "", timedelta(0)) == 1
    await assert_nothing_stored(s3)
