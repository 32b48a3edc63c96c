"""`S3ObjectFile` on a real S3 server: random and sequential reads, one download for a front-to-back pass."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
import zipfile
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import aioboto3
import pytest

from common.s3 import S3
from tests.conftest import Servers, s3_client_options
from validator_service.content import StorageError
from validator_service.content.source import READ_SIZE, Cancelled, S3ObjectFile

T = TypeVar("T")
DATA = os.urandom(3 * READ_SIZE + 12345)
KEY = "versions/object"


@pytest.fixture
async def s3(servers: Servers, bucket: str) -> AsyncIterator[S3]:
    async with aioboto3.Session().client(**s3_client_options(servers)) as client:
        await client.put_object(Bucket=bucket, Key=KEY, Body=DATA)
        yield S3(client=client, presigner=client, bucket=bucket)


async def in_thread(s3: S3, work: Callable[[S3ObjectFile], T], *, key: str = KEY, size: int = len(DATA)) -> T:
    """Run `work` on a file over `key` in a thread, as the validator does (reads go through this loop)."""
    loop = asyncio.get_running_loop()

    def run() -> T:
        with S3ObjectFile(s3, key, size, loop, threading.Event()) as artifact:
            return work(artifact)

    return await asyncio.to_thread(run)


async def test_random_reads_and_seeks(s3: S3) -> None:
    def work(f: S3ObjectFile) -> list[bytes]:
        pieces = [f.read(10)]
        f.seek(-22, io.SEEK_END)
        pieces.append(f.read(100))  # only 22 left
        f.seek(READ_SIZE + 5)
        pieces.append(f.read(READ_SIZE + 7))  # crosses a fetch boundary
        pieces.append(f.read(0))
        f.seek(len(DATA) + 10)
        pieces.append(f.read(5))
        assert f.tell() == len(DATA) + 10
        with pytest.raises(ValueError, match="negative"):
            f.seek(-1)
        return pieces

    pieces = await in_thread(s3, work)
    assert pieces == [DATA[:10], DATA[-22:], DATA[READ_SIZE + 5 : 2 * READ_SIZE + 12], b"", b""]


async def test_a_front_to_back_pass_downloads_once_hash_included(s3: S3) -> None:
    def work(f: S3ObjectFile) -> tuple[bytes, str, int]:
        chunks = []
        while chunk := f.read(4096):
            chunks.append(chunk)
        return b"".join(chunks), f.finish_sha256(), f.bytes_fetched

    data, digest, fetched = await in_thread(s3, work)
    assert data == DATA
    assert digest == hashlib.sha256(DATA).hexdigest()
    assert fetched == len(DATA), "the hash reused the pass: nothing was read twice"


async def test_the_hash_after_random_reads_reads_the_rest_once(s3: S3) -> None:
    def work(f: S3ObjectFile) -> tuple[str, int]:
        f.seek(-100, io.SEEK_END)
        f.read(100)
        return f.finish_sha256(), f.bytes_fetched

    digest, fetched = await in_thread(s3, work)
    assert digest == hashlib.sha256(DATA).hexdigest()
    assert len(DATA) <= fetched <= len(DATA) + 64 * 1024


async def test_zipfile_reads_a_member_without_downloading_the_archive(servers: Servers, s3: S3) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("big.bin", os.urandom(8 * READ_SIZE))
        archive.writestr("depot.json", b'{"name": "x"}')
    data = buffer.getvalue()
    await s3.client.put_object(Bucket=s3.bucket, Key="versions/zip", Body=data)

    def work(f: S3ObjectFile) -> tuple[list[str], bytes, int]:
        with zipfile.ZipFile(f) as archive:
            return archive.namelist(), archive.read("depot.json"), f.bytes_fetched

    names, manifest, fetched = await in_thread(s3, work, key="versions/zip", size=len(data))
    assert names == ["big.bin", "depot.json"]
    assert manifest == b'{"name": "x"}'
    assert fetched < len(data) / 4, f"{fetched} of {len(data)} bytes fetched"


async def test_a_missing_object_is_a_storage_error_not_content(s3: S3) -> None:
    with pytest.raises(StorageError) as raised:
        await in_thread(s3, lambda f: f.read(10), key="versions/missing")
    assert not isinstance(raised.value, Cancelled)


async def test_an_object_shorter_than_said_is_a_storage_error(s3: S3) -> None:
    def work(f: S3ObjectFile) -> bytes:
        return f.read()

    with pytest.raises(StorageError, match="ended"):
        await in_thread(s3, work, size=len(DATA) + 10)


async def test_a_cancelled_job_stops_at_its_next_read(s3: S3) -> None:
    loop = asyncio.get_running_loop()
    cancelled = threading.Event()

    def run() -> None:
        with S3ObjectFile(s3, KEY, len(DATA), loop, cancelled) as f:
            f.read(10)
            cancelled.set()
            f.read(10)  # still in the buffer: no fetch, no check
            f.seek(2 * READ_SIZE)
            f.read(10)

    with pytest.raises(Cancelled):
        await asyncio.to_thread(run)


async def test_reads_that_skip_ahead_in_order_are_one_download_hash_included(s3: S3) -> None:
    # A zip inspected member by member: the directory at the end, then each member's first bytes.
    def work(f: S3ObjectFile) -> tuple[list[bytes], str, int]:
        f.seek(-100, io.SEEK_END)
        heads = [f.read(100)]
        for start in range(0, len(DATA), 300_000):
            f.seek(start)
            heads.append(f.read(20_000))
        return heads, f.finish_sha256(), f.bytes_fetched

    heads, digest, fetched = await in_thread(s3, work)
    assert heads == [DATA[-100:], *(DATA[start : start + 20_000] for start in range(0, len(DATA), 300_000))]
    assert digest == hashlib.sha256(DATA).hexdigest()
    assert fetched <= len(DATA) + 2 * 64 * 1024, f"{fetched} bytes fetched for {len(DATA)}"


async def test_reads_behind_the_hashed_prefix_do_not_disturb_it(s3: S3) -> None:
    def work(f: S3ObjectFile) -> tuple[bytes, bytes, str]:
        first = f.read(3 * READ_SIZE)  # a stream is open, well past the start
        f.seek(1000)
        again = f.read(2 * READ_SIZE)  # behind it: ranges
        return first, again, f.finish_sha256()

    first, again, digest = await in_thread(s3, work)
    assert (first, again) == (DATA[: 3 * READ_SIZE], DATA[1000 : 1000 + 2 * READ_SIZE])
    assert digest == hashlib.sha256(DATA).hexdigest()
