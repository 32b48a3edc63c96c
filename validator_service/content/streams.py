"""Bounded readers over an artifact and over what it contains, for the inspections.

Content comes in two shapes. Some can be read anywhere, cheaply (`RandomAccess`): the artifact
itself (ranged reads of the S3 object), a zip member stored uncompressed (a `Window` on its
archive), a spooled copy. The rest can only be read once, front to back (`Read`, a function that
gives up to n bytes and b"" at the end): a tar member, a compressed zip member, what a gzip
stream holds. `Replay` lets such a stream be read again from its start, keeping what was read
(in memory up to `SPOOL_MEMORY`, then in a temporary file), and `spool` copies one whole for
formats that need random access (a zip inside a tar, say).

Every read is bounded (`READ_SIZE` at most), decompressors are given output limits and memory
limits, and decompressed bytes are checked against the compression ratio as they stream, so no
content, however hostile, makes memory grow with its size.
"""

from __future__ import annotations

import bz2
import lzma
import tempfile
import zlib
from collections.abc import Callable
from typing import IO, BinaryIO, Final, Literal, Protocol

from backports import zstd

from validator_service.content import StorageError

KiB: Final = 1024
MiB: Final = 1024 * KiB

READ_SIZE: Final = 1 * MiB  # the largest single read
CHUNK: Final = 64 * KiB  # the usual read: compressed input, decompressed output, member data
SPOOL_MEMORY: Final = 1 * MiB  # bytes a spooled copy keeps in memory before it goes to a temporary file
RATIO_FLOOR: Final = 1 * MiB  # a stream that unpacks to at most this is never refused for its ratio
MAX_DECODER_MEMORY: Final = 96 * MiB  # xz and zstd decoder memory, for all the streams open at once
MAX_DECODER_MEMORY_EACH: Final = 80 * MiB  # one decoder's share: enough for `xz -9` (65 MiB), `zstd -19`

Read = Callable[[int], bytes]
"""Up to n bytes from a stream, b"" at its end."""

Compression = Literal["gzip", "bzip2", "xz", "zstd"]


class Malformed(Exception):
    """The content's structure is broken; the message says how.

    `source` is the stream whose structure it is (a decompressor, a tar reader), when known: an
    error raised while reading an outer stream passes through the handlers of what it holds.
    """

    def __init__(self, message: str, source: object = None) -> None:
        super().__init__(message)
        self.source = source


class Refused(Exception):
    """A limit of the rules is exceeded: the inspection stops."""


class RandomAccess(Protocol):
    """Content readable at any offset."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` (fewer only at the end)."""
        ...


class FileAccess:
    """Random access over a seekable binary file of `size` bytes, `READ_SIZE` at most per read.

    It remembers a `StorageError` on its way through (`raise_stored`): parsers read through here
    (tarfile, the pickle scanner), and should one ever swallow it, it is raised again afterwards.
    A storage failure must never become a verdict on the content.
    """

    def __init__(self, f: BinaryIO | IO[bytes], size: int) -> None:
        self._f = f
        self._size = size
        self.storage_error: StorageError | None = None

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        size = min(size, self._size - offset)
        if size <= 0:
            return b""
        try:
            self._f.seek(offset)
            chunks: list[bytes] = []
            while size > 0:
                chunk = self._f.read(min(size, READ_SIZE))
                if not chunk:
                    break
                chunks.append(chunk)
                size -= len(chunk)
        except StorageError as error:
            self.storage_error = error
            raise
        return b"".join(chunks)

    def raise_stored(self) -> None:
        """Raise again a `StorageError` that something between here and the caller swallowed."""
        if self.storage_error is not None:
            raise self.storage_error


class Window:
    """`size` bytes of another content, from `start` (a zip member stored uncompressed)."""

    def __init__(self, parent: RandomAccess, start: int, size: int) -> None:
        self._parent = parent
        self._start = start
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        size = min(size, self._size - offset)
        return self._parent.read_at(self._start + offset, size) if size > 0 else b""


def sequential(access: RandomAccess, start: int = 0) -> Read:
    """A reader of `access` front to back, from `start`."""
    position = start

    def read(size: int) -> bytes:
        nonlocal position
        data = access.read_at(position, max(1, min(size, READ_SIZE)))
        position += len(data)
        return data

    return read


def read_up_to(read: Read, size: int) -> bytes:
    """`size` bytes from `read`, or fewer at its end, read at most `CHUNK` at a time."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = read(min(size, CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def skip_up_to(read: Read, size: int) -> int:
    """Read and drop `size` bytes (fewer at the end); how many there were."""
    skipped = 0
    while skipped < size and (chunk := read(min(size - skipped, READ_SIZE))):
        skipped += len(chunk)
    return skipped


def skip_all(read: Read) -> int:
    """Read to the end, keeping nothing; how many bytes there were."""
    total = 0
    while chunk := read(READ_SIZE):
        total += len(chunk)
    return total


class ReadOnly:
    """The one method of a file that the pickle scanner uses, over a reader: no buffering layer, no copy."""

    def __init__(self, read: Read) -> None:
        self.read = read


class Replay:
    """A stream read once from its source, that `open` can read again from its start.

    What has been read from the source is kept while `keep` is true (the first `CHUNK` always,
    so that a stream's head can be sniffed and read again): in memory up to `SPOOL_MEMORY`,
    beyond that in a temporary file. The readers `open` gives serve what was kept, then go on
    reading the source (keeping it too while `keep` is true). Only one reader is used at a time.
    """

    def __init__(self, source: Read) -> None:
        self._source = source
        self._kept = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - closed in close()
        self._kept_size = 0
        self._taken = 0  # bytes read from the source
        self.keep = True

    def open(self) -> Read:
        """A reader from the stream's first byte."""
        if self._taken > self._kept_size:
            raise RuntimeError("the stream was read past what was kept: it cannot be read again")
        position = 0

        def read(size: int) -> bytes:
            nonlocal position
            size = max(1, min(size, READ_SIZE))
            if position < self._kept_size:
                self._kept.seek(position)
                data = self._kept.read(min(size, self._kept_size - position))
            elif position == self._taken:
                data = self._source(size)
                self._taken += len(data)
                if data and (self.keep or self._kept_size < CHUNK) and self._kept_size == position:
                    self._kept.seek(self._kept_size)
                    self._kept.write(data)
                    self._kept_size += len(data)
            else:
                raise RuntimeError("another reader of this stream went ahead of this one")
            position += len(data)
            return data

        return read

    def close(self) -> None:
        self._kept.close()


def spool(read: Read, limit: int) -> tuple[FileAccess, IO[bytes]]:
    """Copy a stream whole into a temporary file (in memory up to `SPOOL_MEMORY`), for random access.

    `Refused` past `limit` bytes. The caller closes the file (which deletes it).
    """
    copy = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - the caller closes it
    size = 0
    while chunk := read(READ_SIZE):
        size += len(chunk)
        if size > limit:
            copy.close()
            raise Refused(f"over {limit} bytes unpacked")
        copy.write(chunk)
    return FileAccess(copy, size), copy


# --- decompression -------------------------------------------------------------------------------


class Decompressor(Protocol):
    """The incremental interface of bz2's, lzma's and zstd's decompressors (zlib's is adapted to it)."""

    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


class Zlib:
    """A zlib decompressor with bz2's interface: its unconsumed input is kept for the next call."""

    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    def decompress(self, data: bytes, max_length: int, /) -> bytes:
        return self._d.decompress(self._d.unconsumed_tail + data, max_length)


DECOMPRESSION_ERRORS: Final = (zlib.error, lzma.LZMAError, zstd.ZstdError, OSError, EOFError, ValueError)


class DecoderMemory:
    """What the xz and zstd decoders open at once may use, shared by every level of nesting."""

    def __init__(self, total: int = MAX_DECODER_MEMORY) -> None:
        self.left = total

    def take(self) -> int:
        """A decoder's memory limit, reserved until `give_back`; `Refused` when none is left."""
        share = min(MAX_DECODER_MEMORY_EACH, self.left)
        if share < 16 * MiB:
            raise Refused(f"compressed streams nested inside each other need more than {MAX_DECODER_MEMORY} bytes")
        self.left -= share
        return share

    def give_back(self, share: int) -> None:
        self.left += share


def _new_decompressor(compression: Compression, memory_limit: int) -> Decompressor:
    if compression == "gzip":
        return Zlib(16 + zlib.MAX_WBITS)  # gzip framing only, its CRC and length checked at the end
    if compression == "bzip2":
        return bz2.BZ2Decompressor()
    if compression == "zstd":
        window_log = memory_limit.bit_length() - 1  # the window is what a zstd decoder's memory holds
        return zstd.ZstdDecompressor(options={zstd.DecompressionParameter.window_log_max: window_log})
    # FORMAT_AUTO takes the legacy .lzma format too; the limit bounds the dictionary a header asks for.
    return lzma.LZMADecompressor(lzma.FORMAT_AUTO, memlimit=memory_limit)


class Decompressed:
    """What a gzip, bzip2, xz or zstd stream holds, read in sequence, at most `size` per read.

    The standard library's file classes are not used: their bzip2 and xz readers decompress a
    whole input chunk at once (unbounded output for a bomb) and ignore trailing garbage. Here,
    concatenated streams are read one after the other as the command-line tools do, zero bytes
    after a stream are padding, and anything else is invalid data.

    The ratio is checked on every read: the bytes delivered (less `allowance`, which a reader
    of the content may grant for bytes that are not data, such as a tar's headers and padding)
    may not exceed `max_ratio` times the compressed bytes read so far (nor `RATIO_FLOOR`).
    """

    def __init__(self, source: Read, compression: Compression, *, max_ratio: float, memory: DecoderMemory) -> None:
        self._source = source
        self._compression = compression
        self._memory = memory
        self._share = memory.take() if compression in {"xz", "zstd"} else 0
        self._d = _new_decompressor(compression, self._share)
        self._carry = b""  # input for the next stream, left over by the previous one
        self._max_ratio = max_ratio
        self._refusal: str | None = None
        self.consumed = 0
        self.delivered = 0
        self.allowance = 0

    def read(self, size: int) -> bytes:
        if self._refusal is not None:
            raise Refused(self._refusal)
        try:
            data = self._read(max(1, min(size, READ_SIZE)))
        except DECOMPRESSION_ERRORS as error:
            raise Malformed(f"invalid {self._compression} data ({error})", self) from None
        self.delivered += len(data)
        unpacked = self.delivered - self.allowance
        if unpacked > max(self._max_ratio * self.consumed, RATIO_FLOOR):
            self._refusal = (
                f"{unpacked} bytes unpacked from the first {self.consumed} {self._compression}-compressed bytes, "
                f"over max_compression_ratio ({self._max_ratio:g})"
            )
            raise Refused(self._refusal)
        return data

    def allow(self, size: int) -> None:
        """Grant `size` delivered bytes that the ratio does not count (see the class docstring)."""
        self.allowance += size

    def close(self) -> None:
        """Give the decoder's memory back."""
        self._memory.give_back(self._share)
        self._share = 0

    def _input(self) -> bytes:
        data = self._source(CHUNK)
        self.consumed += len(data)
        return data

    def _read(self, size: int) -> bytes:
        while True:
            if self._d.eof and not self._next_stream():
                return b""
            data = b""
            if self._d.needs_input:
                data, self._carry = (self._carry, b"") if self._carry else (self._input(), b"")
                if not data:
                    raise Malformed(
                        f"the {self._compression} data is truncated (it ends before its end-of-stream marker)", self
                    )
            output = self._d.decompress(data, size)
            if output:
                return output

    def _next_stream(self) -> bool:
        """After a stream's end: start the next one if more data follows, else say there is none."""
        rest = self._d.unused_data.lstrip(b"\x00")
        while not rest:
            more = self._input()
            if not more:
                return False
            rest = more.lstrip(b"\x00")
        self._d = _new_decompressor(self._compression, self._share)
        self._carry = rest
        return True
