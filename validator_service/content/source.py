"""Reading a stored artifact: a seekable file over the S3 object, and its SHA-256.

The checks are synchronous code (zipfile, tarfile, decompressors, the pickle scanner) and run in
a worker thread; `S3ObjectFile` gives them a seekable binary file whose reads are S3 requests
made on the service's event loop. Memory stays bounded: at most two chunks are held (the one
being read, and the next one being fetched).

The SHA-256 of the object is computed on the way, and reads are shaped so that it costs no
second download: the hashed prefix grows with every read that continues it, and `finish_sha256`
reads only what is left.

- Random reads (a zip's central directory at the end, a member's first bytes) fetch a bounded
  range (`RANDOM_WINDOW` or what was asked, up to `READ_SIZE`).
- Reads that go on where the last one ended fetch ranges twice as large each time; once such a
  run passes `STREAM_AFTER` bytes at or past the end of the hashed prefix, the file opens one
  streamed GET from the end of that prefix to the end of the object, read `READ_SIZE` at a time
  with one chunk read ahead. (A stream opened for a short run would cost a connection when dropped.)
- Reads that jump forward twice in a row are a pass through the content, not a lookup (a zip's
  directory at its end is one): from the second such jump on, within `READ_THROUGH` of the end of
  the hashed prefix (or anywhere ahead of the stream once it is open), the file reads on through
  the gap rather than jumping. Those bytes must be hashed anyway, and reading them now keeps the
  download to one pass: a zip inspected member by member in stored order is one download too.

Hashing runs in a thread of its own, fed the chunks as they arrive (hashlib lets go of the GIL),
so that it overlaps the checks' own work (decompressing, scanning) instead of adding to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import queue
import threading
from collections.abc import Awaitable
from concurrent.futures import Future
from typing import Any, BinaryIO, TypeVar

from common.logging import describe_error
from common.s3 import S3
from validator_service.content import StorageError

READ_SIZE = 1024 * 1024
RANDOM_WINDOW = 64 * 1024
STREAM_AFTER = 1024 * 1024  # bytes read in sequence by ranges before a streamed GET is worth it
HASH_QUEUE = 4  # chunks waiting for the hashing thread, at most
READ_THROUGH = 64 * 1024 * 1024  # a jump ahead of the hashed prefix up to this far reads through the gap
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
        self._run = 0  # bytes fetched in sequence up to `_last_end`
        self._last_start = 0  # where the previous fetch began
        self._forward_jumps = 0  # fetches in a row that jumped ahead of the previous one
        self._hasher = _ThreadedSha256()
        self._hashed = 0  # bytes of the object's prefix given to the hasher
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
        """The object's SHA-256, reading only the part not hashed by earlier reads."""
        self.seek(self._hashed)
        while self._hashed < self._size:
            self.read(READ_SIZE)
        return self._hasher.hexdigest()

    def close(self) -> None:
        self._close_stream()
        self._hasher.close()
        self._buffer = b""
        super().close()

    def _read_some(self, wanted: int) -> bytes:
        """Up to `wanted` bytes at the position (at least one), from the buffer or a new fetch."""
        offset = self._position - self._buffer_start
        if not 0 <= offset < len(self._buffer):
            self._fetch(wanted)  # the new buffer holds the position (read on through a gap, it may start before)
            offset = self._position - self._buffer_start
        piece = self._buffer[offset : offset + wanted]
        self._position += len(piece)
        return piece

    def _fetch(self, wanted: int) -> None:
        if self._cancelled.is_set():
            raise Cancelled
        start = self._position
        sequential = start == self._last_end
        self._run = self._run if sequential else 0
        if not sequential:
            self._forward_jumps = self._forward_jumps + 1 if start > self._last_start else 0
        self._last_start = start
        if self._stream is not None and self._stream_position <= start:
            self._stream_to(start)  # on through any gap: those bytes are the hashed prefix's own way
            return
        passing_through = self._forward_jumps >= 2 and start - self._hashed <= READ_THROUGH
        if ((sequential and self._run >= STREAM_AFTER) or passing_through) and self._hashed <= start:
            self._open_stream()
            self._stream_to(start)
            return
        window = 2 * self._run if sequential else RANDOM_WINDOW
        end = min(self._size, start + min(max(wanted, window, RANDOM_WINDOW), READ_SIZE))
        self._received(start, self._call(self._get_range(start, end)))

    def _stream_to(self, start: int) -> None:
        """Read the stream on until its chunk holds `start`."""
        while True:
            chunk_start = self._stream_position
            data = self._from_stream()
            self._received(chunk_start, data)
            if chunk_start + len(data) > start:
                return
            if self._cancelled.is_set():
                raise Cancelled

    def _received(self, start: int, data: bytes) -> None:
        """`data`, fetched at `start`: the new buffer, and hashed as far as it extends the prefix."""
        if not data:
            raise StorageError(f"the object ended at {start} bytes, {self._size} expected")
        self.bytes_fetched += len(data)
        self._run += len(data)
        self._buffer, self._buffer_start, self._last_end = data, start, start + len(data)
        if start <= self._hashed < start + len(data):
            self._hasher.update(data[self._hashed - start :])
            self._hashed = start + len(data)

    def _open_stream(self) -> None:
        """A streamed GET from the end of the hashed prefix to the end of the object."""
        self._close_stream()
        opened = self._s3.client.get_object(Bucket=self._s3.bucket, Key=self._key, Range=f"bytes={self._hashed}-")
        self._stream, self._stream_position = self._call(opened)["Body"], self._hashed

    def _from_stream(self) -> bytes:
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
            raise StorageError(describe_error(error)) from error

    def _call(self, awaitable: Awaitable[T]) -> T:
        return self._wait(self._submit(awaitable))


class _ThreadedSha256:
    """SHA-256 computed in a thread of its own, from chunks handed over in order (a few waiting at most)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(HASH_QUEUE)
        self._thread: threading.Thread | None = None

    def update(self, data: bytes) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
            self._thread.start()
        self._chunks.put(data)

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()

    def close(self) -> None:
        """Wait for the chunks handed over to be hashed, and stop the thread."""
        if self._thread is not None:
            self._chunks.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._hash.update(chunk)


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
