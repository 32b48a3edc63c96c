"""Version bytes in S3: streaming uploads, ranged downloads, deletion and the orphan-upload sweep.

Uploads never hold a whole body: the request stream is cut into fixed-size parts that go to S3
as a multipart upload while the body still arrives, at most `max_in_flight` at a time, hashed
(SHA-256) on the way. Reading stops while every upload slot is busy, so a fast client is slowed
down to S3's pace instead of being buffered. A body smaller than one part is sent with a single
`PutObject`. On any failure, cancellation included, the multipart upload is aborted, so neither an
object nor an open upload is left behind.

Keys are chosen by the caller and must be built from ids, never from user-supplied strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from botocore.exceptions import ClientError, EndpointConnectionError

from common.errors import BadRequest, PayloadTooLarge, RangeNotSatisfiable
from common.resources import Spawn
from common.s3 import MAX_PARTS, MIN_PART_SIZE, S3, error_code

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
"""With two parts in flight and one filling: about 24 MiB per upload."""
DOWNLOAD_CHUNK_SIZE = 1 * MiB

_HEX_DIGITS = frozenset("0123456789abcdef")
_CHECKSUM_MISMATCH = "The body's SHA-256 does not match X-Checksum-Sha256."


def object_key(version_id: uuid.UUID) -> str:
    """Where a version's bytes live: built from ids only, never from names a user chose."""
    return f"versions/{version_id}"


def part_size_for(max_bytes: int) -> int:
    """8 MiB parts, larger when needed so that the largest artifact fits in S3's parts (9,000 of them, with room)."""
    needed = -(-max_bytes // 9_000)
    return max(DEFAULT_PART_SIZE, -(-needed // MiB) * MiB)


@dataclass(frozen=True)
class StoredObject:
    """What an upload stored: the key, the size in bytes and the hex SHA-256 of the bytes."""

    key: str
    size: int
    sha256: str


@dataclass
class _Upload:
    """The state that the cleanup of a failed upload needs."""

    key: str
    upload_id: str | None = None
    parts: set[asyncio.Task[tuple[int, str]]] = field(default_factory=set)
    # Set while PutObject or CompleteMultipartUpload runs: if that is interrupted, the object may exist.
    committing: bool = False


async def upload_stream(
    s3: S3,
    key: str,
    chunks: AsyncIterator[bytes],
    *,
    max_bytes: int,
    spawn: Spawn,
    part_size: int = DEFAULT_PART_SIZE,
    max_in_flight: int = 2,
    content_type: str = "application/octet-stream",
    expected_sha256: str | None = None,
    allow_empty: bool = True,
) -> StoredObject:
    """Store the bytes of `chunks` under `key`, and return their size and SHA-256.

    Raises `PayloadTooLarge` as soon as more than `max_bytes` arrived, and `BadRequest` when
    `expected_sha256` (hex, any case) is given and does not match, or when no byte arrived and
    `allow_empty` is false; in all these cases, as on any other
    error or cancellation, nothing is stored (the cleanup runs as a task of `spawn`'s owner, so a
    cancelled request still finishes it). S3 errors propagate unchanged.
    Memory use is bounded by `(max_in_flight + 1) * part_size`.
    """
    if part_size < MIN_PART_SIZE:
        raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    if max_bytes < 0:
        raise ValueError("max_bytes must not be negative")
    if -(-max_bytes // part_size) > MAX_PARTS:
        raise ValueError(f"max_bytes needs more than {MAX_PARTS} parts of part_size bytes")
    expected = _normalized_sha256(expected_sha256)

    upload = _Upload(key)
    try:
        return await _upload(
            s3,
            upload,
            chunks,
            max_bytes=max_bytes,
            part_size=part_size,
            max_in_flight=max_in_flight,
            content_type=content_type,
            expected=expected,
            allow_empty=allow_empty,
        )
    except BaseException as error:
        # Shielded: if the request is cancelled again while waiting, the cleanup goes on without it.
        await asyncio.shield(spawn(_cleanup(s3, upload, error), "upload_cleanup"))
        raise


def _normalized_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) != 64 or not _HEX_DIGITS.issuperset(value):
        # It could never match: refuse before reading the body.
        raise BadRequest("X-Checksum-Sha256 must be 64 hexadecimal characters.")
    return value


async def _upload(
    s3: S3,
    upload: _Upload,
    chunks: AsyncIterator[bytes],
    *,
    max_bytes: int,
    part_size: int,
    max_in_flight: int,
    content_type: str,
    expected: str | None,
    allow_empty: bool,
) -> StoredObject:
    digest = hashlib.sha256()
    buffer = bytearray()
    size = 0
    etags: dict[int, str] = {}
    next_part = 1

    async for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"The body is larger than the limit of {max_bytes} bytes.")
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            # Appending at most what the part still lacks keeps copying linear in the body size.
            room = part_size - len(buffer)
            buffer += view[:room]
            view = view[room:]
            if len(buffer) < part_size:
                break
            if upload.upload_id is None:
                created = await s3.client.create_multipart_upload(
                    Bucket=s3.bucket, Key=upload.key, ContentType=content_type
                )
                upload.upload_id = created["UploadId"]
            # Backpressure: with every slot busy, stop reading until a part is done.
            await _wait_below(upload.parts, etags, max_in_flight)
            part, buffer = _part_body(buffer), bytearray()
            upload.parts.add(asyncio.create_task(_upload_part(s3, upload.key, upload.upload_id, next_part, part)))
            next_part += 1

    if size == 0 and not allow_empty:
        raise BadRequest("The body is empty: an artifact has at least one byte.")
    sha256 = digest.hexdigest()
    if upload.upload_id is None:
        # Less than one part: a single request, only if the checksum is right.
        _check_sha256(sha256, expected)
        upload.committing = True
        await s3.client.put_object(Bucket=s3.bucket, Key=upload.key, Body=_part_body(buffer), ContentType=content_type)
        return StoredObject(upload.key, size, sha256)

    if buffer:
        await _wait_below(upload.parts, etags, max_in_flight)
        part, buffer = _part_body(buffer), bytearray()
        upload.parts.add(asyncio.create_task(_upload_part(s3, upload.key, upload.upload_id, next_part, part)))
    await _wait_below(upload.parts, etags, 1)
    # Checked before completing, so that a wrong body never becomes visible; the caller aborts.
    _check_sha256(sha256, expected)
    completed: list[CompletedPartTypeDef] = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
    upload.committing = True
    await s3.client.complete_multipart_upload(
        Bucket=s3.bucket, Key=upload.key, UploadId=upload.upload_id, MultipartUpload={"Parts": completed}
    )
    return StoredObject(upload.key, size, sha256)


def _check_sha256(actual: str, expected: str | None) -> None:
    if expected is not None and not hmac.compare_digest(actual, expected):
        raise BadRequest(_CHECKSUM_MISMATCH)


async def _wait_below(parts: set[asyncio.Task[tuple[int, str]]], etags: dict[int, str], limit: int) -> None:
    """Wait until fewer than `limit` parts are uploading; re-raise the first failed part's error."""
    _collect(parts, etags)
    while len(parts) >= limit:
        await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
        _collect(parts, etags)


def _collect(parts: set[asyncio.Task[tuple[int, str]]], etags: dict[int, str]) -> None:
    """Move finished parts from `parts` to `etags`; re-raise the first failure."""
    for task in [task for task in parts if task.done()]:
        parts.discard(task)
        number, etag = task.result()
        etags[number] = etag


def _part_body(buffer: bytearray) -> io.BytesIO:
    # A BytesIO is sent in small writes (a large bytes body is copied whole into the socket's
    # buffer) and can be rewound for botocore's retries. The caller drops `buffer` right after.
    return io.BytesIO(buffer)


async def _upload_part(s3: S3, key: str, upload_id: str, number: int, body: io.BytesIO) -> tuple[int, str]:
    response = await s3.client.upload_part(Bucket=s3.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
    return number, response["ETag"]


async def _cleanup(s3: S3, upload: _Upload, error: BaseException) -> None:
    """Undo a failed upload: stop its parts, abort it, delete what an interrupted completion stored."""
    for task in upload.parts:
        task.cancel()
    # Parts must have stopped before the abort, or one could land after it.
    await asyncio.gather(*upload.parts, return_exceptions=True)
    upload.parts.clear()
    if upload.upload_id is not None:
        try:
            await s3.client.abort_multipart_upload(Bucket=s3.bucket, Key=upload.key, UploadId=upload.upload_id)
        except Exception as abort_error:
            # NoSuchUpload: an interrupted CompleteMultipartUpload went through (the object is deleted below).
            if error_code(abort_error) != "NoSuchUpload":
                log.exception("multipart_abort_failed", key=upload.key, upload_id=upload.upload_id)
    # An interrupted PutObject or CompleteMultipartUpload may have stored the object after all,
    # unless S3 answered with an error or was never reached.
    if upload.committing and not isinstance(error, ClientError | EndpointConnectionError):
        try:
            await s3.client.delete_object(Bucket=s3.bucket, Key=upload.key)
        except Exception:
            log.exception("interrupted_upload_delete_failed", key=upload.key)


_HUGE = 10**20
"""Larger than any object S3 stores (5 TiB): every position in a `Range` header beyond it is the same."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte bounds that a `Range` header asks of a body of `size` bytes.

    Only a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range is honoured (RFC 9110, 14.1.2).
    Returns None when the whole body should be sent: no header, or one that is malformed, of
    another unit or with several ranges, which a server may ignore. Raises `RangeNotSatisfiable`
    when the range starts at or beyond the end, asks for the last zero bytes, or `size` is 0.
    Numbers of any length are read (a position beyond every object is beyond this one), never
    converted whole: Python refuses to convert more than 4,300 digits.
    """
    if header is None:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep or not _is_digits(first or "0") or not _is_digits(last or "0") or not (first or last):
        return None
    if not first:
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size - 1
    start = _position(first)
    if last and _position(last) < start:
        return None  # invalid, hence ignored (RFC 9110, 14.1.1)
    if start >= size:
        raise RangeNotSatisfiable(size)
    end = min(_position(last), size - 1) if last else size - 1
    return start, end


def _is_digits(text: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits such as "²".
    return text.isascii() and text.isdigit()


def _position(digits: str) -> int:
    """The number `digits` spell, capped at `_HUGE` (only the order with real positions matters)."""
    significant = digits.lstrip("0")
    if len(significant) > len(str(_HUGE)):
        return _HUGE
    return min(int(significant or "0"), _HUGE)


def range_headers(size: int, range_header: str | None) -> tuple[int, dict[str, str], tuple[int, int] | None]:
    """The status (200 or 206), headers and bounds of the answer to a download of `size` bytes.

    Raises `RangeNotSatisfiable` for a range outside the body; ignores malformed ones. Asks
    nothing of S3: a `HEAD` is answered from this alone.
    """
    bounds = parse_range(range_header, size)
    headers = {"Accept-Ranges": "bytes"}
    if bounds is None:
        headers["Content-Length"] = str(size)
        return 200, headers, None
    start, end = bounds
    headers["Content-Length"] = str(end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return 206, headers, bounds


@dataclass
class ObjectStream:
    """An S3 object on its way to a client: status, headers and body of the response.

    `close` must be awaited when the response ends, however it ends: it releases the S3 connection.
    """

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


async def open_download(s3: S3, key: str, size: int, range_header: str | None) -> ObjectStream:
    """Start reading the object at `key` (of `size` bytes), or the part that `range_header` asks for.

    Raises `RangeNotSatisfiable` for a range outside the body; ignores malformed ones.
    """
    status, headers, bounds = range_headers(size, range_header)
    if bounds is None:
        response = await s3.client.get_object(Bucket=s3.bucket, Key=key)
    else:
        start, end = bounds
        response = await s3.client.get_object(Bucket=s3.bucket, Key=key, Range=f"bytes={start}-{end}")
    stream = response["Body"]
    closed = False

    async def relay() -> AsyncGenerator[bytes, None]:
        # `read` returns what has arrived, up to the chunk size; it checks the length at the end.
        while chunk := await stream.read(DOWNLOAD_CHUNK_SIZE):
            yield chunk

    body = relay()

    async def close() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        # Closing drops the connection if the body was not read to its end (it cannot be reused
        # then); after a complete read, aiohttp has already returned it to the pool.
        stream.close()
        # The relay may still be suspended inside a read of another task; it fails on its next read.
        with contextlib.suppress(RuntimeError):
            await body.aclose()

    return ObjectStream(status=status, headers=headers, body=body, close=close)


async def delete_object(s3: S3, key: str) -> None:
    """Delete the object at `key`; deleting a missing object succeeds."""
    await s3.client.delete_object(Bucket=s3.bucket, Key=key)


@dataclass(frozen=True)
class MultipartUpload:
    """An open S3 multipart upload."""

    key: str
    upload_id: str
    initiated: datetime


async def list_multipart_uploads(s3: S3, prefix: str) -> list[MultipartUpload]:
    """The open multipart uploads under `prefix`, listed in full (so that aborts cannot shift the pagination)."""
    found: list[MultipartUpload] = []
    paginator = s3.client.get_paginator("list_multipart_uploads")
    async for page in paginator.paginate(Bucket=s3.bucket, Prefix=prefix):
        for item in page.get("Uploads", []):
            initiated = item.get("Initiated")
            if "Key" in item and "UploadId" in item and initiated is not None:
                found.append(MultipartUpload(item["Key"], item["UploadId"], initiated))
    return found


async def abort_multipart_upload(s3: S3, key: str, upload_id: str) -> bool:
    """Abort a multipart upload (its parts are dropped, its part URLs take no more bytes); False if it was gone."""
    try:
        await s3.client.abort_multipart_upload(Bucket=s3.bucket, Key=key, UploadId=upload_id)
    except ClientError as error:
        if error_code(error) != "NoSuchUpload":
            raise
        return False
    return True


async def abort_multipart_uploads(s3: S3, uploads: list[MultipartUpload]) -> int:
    """Abort these multipart uploads; how many were still there."""
    aborted = 0
    for upload in uploads:
        if await abort_multipart_upload(s3, upload.key, upload.upload_id):
            aborted += 1
    return aborted


async def abort_orphan_uploads(s3: S3, prefix: str, older_than: timedelta) -> int:
    """Abort the multipart uploads under `prefix` initiated more than `older_than` ago.

    They are what a crashed process leaves behind (a live one aborts its own failures). Returns
    how many were aborted; an upload that is already gone is skipped.
    """
    cutoff = datetime.now(UTC) - older_than
    old = [upload for upload in await list_multipart_uploads(s3, prefix) if upload.initiated < cutoff]
    return await abort_multipart_uploads(s3, old)
