"""Reading a stored artifact: a seekable file over the S3 object, and its SHA-256.

The checks are synchronous code (zipfile, tarfile, decompressors, the pickle scanner) and run in
a worker thread; `S3ObjectFile` gives them a seekable binary file whose reads are S3 requests
made on the service's event loop. Memory stays bounded: at most two chunks are held (the one
being read, and the next one being fetched).

Reads are served two ways. Random ones (a zip's central directory at the end, one member here
and there) fetch a bounded range (`RANDOM_WINDOW` or what was asked, up to `READ_SIZE`).
When reads continue where the last one ended, the file switches to one streamed GET from there
to the end, read `READ_SIZE` at a time, so a front-to-back pass is a single download.

The SHA-256 of the object is computed on the way: every read that continues the hashed prefix
extends it, and `finish_sha256` reads only what is left. A tar or pickle scanned front to back
is therefore downloaded once, hash included. When the reads will jump around (a zip), the caller
asks for `hash_in_background` instead: a thread of its own hashes the object on a stream of its
own while the checks go on, so that hashing and inspecting take the longer of the two, not the sum.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import Awaitable
from concurrent.futures import Future
from typing import Any, BinaryIO, TypeVar

from common.queue import describe
from common.s3 import S3
from validator_service.content import StorageError

READ_SIZE = 1024 * 1024
RANDOM_WINDOW = 64 * 1024
S3_CALL_TIMEOUT = 60.0  # seconds for one S3 request or one chunk of a stream

T = TypeVar("T")


def sha256_of(f: BinaryIO) -> str:
    """The hex SHA-256 of the whole file; reads only what was not hashed yet when `f` tracks it."""
    finish = getattr(f, "finish_sha256", None)
    if callable(finish):
        digest: str = finish()
        return digest
    f.seek(0)
    hasher = hashlib.sha256()
    while chunk := f.read(READ_SIZE):
        hasher.update(chunk)
    return hasher.hexdigest()


class Cancelled(StorageError):
    """The job was given up (lease lost, service stopping): the thread stops at its next read."""


class S3ObjectFile(io.RawIOBase):
    """A read-only, seekable file over `key` (of `size` bytes), for use from a thread other than `loop`'s."""

    def __init__(
        self, s3: S3, key: str, size: int, loop: asyncio.AbstractEventLoop, cancelled: threading.Event
    ) -> None:
        super().__init__()
        self._s3, self._key, self._size, self._loop, self._cancelled = s3, key, size, loop, cancelled
        self._position = 0
        self._buffer = b""  # bytes of the object from `_buffer_start`
        self._buffer_start = 0
        self._stream: Any = None  # an open streamed GET, positioned at `_stream_position`
        self._stream_position = 0
        self._next_read: Future[bytes] | None = None  # the stream's next chunk, being fetched
        self._last_end = -1  # where the previous fetch ended: a read there is sequential
        self._hasher = hashlib.sha256()
        self._hashed = 0
        self._background: threading.Thread | None = None
        self._background_error: BaseException | None = None
        self._closing = threading.Event()
        self.bytes_fetched = 0

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        wanted = self._size - self._position if size is None or size < 0 else size
        wanted = min(wanted, self._size - self._position)
        if wanted <= 0:
            return b""
        pieces = []
        while wanted > 0:
            piece = self._read_some(wanted)
            pieces.append(piece)
            wanted -= len(piece)
        return b"".join(pieces) if len(pieces) > 1 else pieces[0]

    def readall(self) -> bytes:
        return self.read(-1)

    def finish_sha256(self) -> str:
        """The object's SHA-256, reading only the part not hashed by earlier reads (or by the
        background hashing, waited for)."""
        if self._background is not None:
            self._background.join()
            if self._background_error is not None:
                raise StorageError(describe(self._background_error)) from self._background_error
            return self._hasher.hexdigest()
        self.seek(self._hashed)
        while self._hashed < self._size:
            self.read(READ_SIZE)
        return self._hasher.hexdigest()

    def hash_in_background(self) -> None:
        """Hash the rest of the object in a thread, on a streamed GET of its own, from now on."""
        if self._background is None and self._hashed < self._size:
            self._background = threading.Thread(target=self._hash_rest, name="sha256", daemon=True)
            self._background.start()

    def _hash_rest(self) -> None:
        try:
            self._hash_stream()
        except BaseException as error:  # noqa: BLE001 - given to finish_sha256, in the checks' thread
            self._background_error = error

    def _hash_stream(self) -> None:
        opened = self._s3.client.get_object(Bucket=self._s3.bucket, Key=self._key, Range=f"bytes={self._hashed}-")
        stream = self._call(opened)["Body"]
        try:
            pending = self._submit(_read_chunk(stream))
            while self._hashed < self._size:
                if self._cancelled.is_set() or self._closing.is_set():
                    raise Cancelled
                data = self._wait(pending)
                if not data:
                    raise StorageError(f"the object ended at {self._hashed} bytes, {self._size} expected")
                if self._hashed + len(data) < self._size:
                    pending = self._submit(_read_chunk(stream))  # fetched while this chunk is hashed
                self._hasher.update(data)
                self._hashed += len(data)
        finally:
            self._loop.call_soon_threadsafe(stream.close)

    def close(self) -> None:
        self._closing.set()
        if self._background is not None:
            self._background.join(S3_CALL_TIMEOUT)
        self._close_stream()
        self._buffer = b""
        super().close()

    def _read_some(self, wanted: int) -> bytes:
        """Up to `wanted` bytes at the position (at least one), from the buffer or a new fetch."""
        offset = self._position - self._buffer_start
        if not 0 <= offset < len(self._buffer):
            self._fetch(wanted)
            offset = 0
        piece = self._buffer[offset : offset + wanted]
        self._position += len(piece)
        return piece

    def _fetch(self, wanted: int) -> None:
        if self._cancelled.is_set():
            raise Cancelled
        start = self._position
        if start == self._last_end or (start == self._stream_position and self._stream is not None):
            data = self._from_stream(start)
        else:
            end = min(self._size, start + min(max(wanted, RANDOM_WINDOW), READ_SIZE))
            data = self._call(self._get_range(start, end))
        if not data:
            raise StorageError(f"the object ended at {start} bytes, {self._size} expected")
        self.bytes_fetched += len(data)
        self._buffer, self._buffer_start, self._last_end = data, start, start + len(data)
        if self._background is not None:
            return  # the background thread owns the hash
        if start == self._hashed:
            self._hasher.update(data)
            self._hashed += len(data)
        elif start < self._hashed < start + len(data):
            self._hasher.update(data[self._hashed - start :])
            self._hashed = start + len(data)

    def _from_stream(self, start: int) -> bytes:
        if self._stream is None or self._stream_position != start:
            self._close_stream()
            opened = self._s3.client.get_object(Bucket=self._s3.bucket, Key=self._key, Range=f"bytes={start}-")
            self._stream, self._stream_position = self._call(opened)["Body"], start
        next_read, self._next_read = self._next_read, None
        data: bytes = self._wait(next_read or self._submit(_read_chunk(self._stream)))
        self._stream_position += len(data)
        if data and self._stream_position < self._size:
            # Read ahead: the loop fetches the next chunk while this thread works on this one.
            self._next_read = self._submit(_read_chunk(self._stream))
        return data

    async def _get_range(self, start: int, end: int) -> bytes:
        response = await self._s3.client.get_object(
            Bucket=self._s3.bucket, Key=self._key, Range=f"bytes={start}-{end - 1}"
        )
        body = response["Body"]
        try:
            data: bytes = await body.read()
        finally:
            body.close()
        return data

    def _close_stream(self) -> None:
        if self._next_read is not None:
            self._next_read.cancel()
            self._next_read = None
        if self._stream is not None:
            stream, self._stream = self._stream, None
            self._loop.call_soon_threadsafe(stream.close)

    def _submit(self, awaitable: Awaitable[T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._loop)

    def _wait(self, future: Future[T]) -> T:
        """Wait here for an S3 call running on the event loop; any failure is a `StorageError`."""
        try:
            return future.result(S3_CALL_TIMEOUT)
        except Exception as error:
            future.cancel()
            raise StorageError(describe(error)) from error

    def _call(self, awaitable: Awaitable[T]) -> T:
        return self._wait(self._submit(awaitable))


async def _read_chunk(stream: Any) -> bytes:
    """`READ_SIZE` bytes of a streamed body (fewer at its end): one hop between threads per chunk, not per packet."""
    pieces: list[bytes] = []
    received = 0
    while received < READ_SIZE and (piece := await stream.read(READ_SIZE - received)):
        pieces.append(piece)
        received += len(piece)
    return b"".join(pieces)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
