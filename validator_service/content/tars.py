"""Tar archives read in one pass with `tarfile`'s stream mode, with what it lets pass refused.

`TarReader` gives the members in order, each with a reader of its data while it is the current
member (tarfile skips what is not read when it moves on), then checks what follows the
end-of-archive marker. Errors from tarfile and from the headers are `Malformed`.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Callable, Iterator
from typing import Final, Self

from validator_service.content.streams import CHUNK, READ_SIZE, Malformed, Read

MAX_EXTENDED_HEADER: Final = 1024 * 1024  # a pax or GNU long-name header, which tarfile reads whole
TAR_OVERHEAD: Final = 1024  # per entry: its 512-byte header, and at most 511 bytes of padding
TAR_END_RECORD: Final = 10 * 1024  # two zero blocks, padded to tar's usual 10 KiB record
TAR_ERRORS: Final = (tarfile.TarError, ValueError, EOFError, OverflowError)
"""What tarfile raises for malformed content (a pax keyword that is not UTF-8 is a ValueError, say)."""

_EXTENDED_TYPES: Final = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _Stream:
    """The file protocol tarfile expects of its file object, over a reader."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self._position = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._read(READ_SIZE if size < 0 else max(1, min(size, READ_SIZE)))
        self._position += len(data)
        return data

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("write")

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, /) -> int:
        raise io.UnsupportedOperation("seek")

    def close(self) -> None:
        """Nothing to release: the stream belongs to the caller."""


class _TarInfo(tarfile.TarInfo):
    """tarfile's headers, with two things tarfile lets pass in stream mode refused.

    After the first member, tarfile takes a bad or truncated header for the end of the archive and
    stops silently (hiding what follows); and it reads a pax or GNU long-name header's data whole
    into memory, whatever size the header declares.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if 0 < len(buf) < tarfile.BLOCKSIZE:
            raise Malformed("the archive is truncated inside a header")
        if len(buf) == 0 or buf.count(0) == tarfile.BLOCKSIZE:
            return super().frombuf(buf, encoding, errors)  # the end: tarfile handles it
        try:
            info = super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as error:
            raise Malformed(f"bad header ({error})") from None
        if info.type in _EXTENDED_TYPES and info.size > MAX_EXTENDED_HEADER:
            raise Malformed(f"an extended header of {info.size} bytes, over the {MAX_EXTENDED_HEADER}-byte limit")
        return info


class _TarFile(tarfile.TarFile):
    """A TarFile that forgets each member once returned: in stream mode nothing looks members up
    again, and keeping them all would grow memory with the entry count."""

    members: list[tarfile.TarInfo]

    def next(self) -> tarfile.TarInfo | None:
        member = super().next()
        self.members.clear()
        return member


class TarReader:
    """The members of the tar archive that `read` gives, front to back.

    `on_overhead` is called before each member with `TAR_OVERHEAD` (and once with `TAR_END_RECORD`
    at the end): the bytes of the tar format itself, mostly zeros, that a compression ratio
    should not count.
    """

    def __init__(self, read: Read, on_overhead: Callable[[int], None] | None = None) -> None:
        self._stream = _Stream(read)
        self._on_overhead = on_overhead or (lambda _: None)
        self._tar: tarfile.TarFile

    def members(self) -> Iterator[tuple[tarfile.TarInfo, Read | None]]:
        """Each member, with a reader of its data if it is a regular file (valid until the next one)."""
        with self._errors():
            tar = _TarFile.open(fileobj=self._stream, mode="r|", tarinfo=_TarInfo, bufsize=CHUNK)
            self._tar = tar
        while True:
            self._on_overhead(TAR_OVERHEAD)
            with self._errors():
                member = tar.next()
            if member is None:
                break
            data = tar.extractfile(member) if is_regular(member) else None
            yield member, (self._reader(data.read) if data is not None else None)
        self._on_overhead(TAR_END_RECORD)

    def trailing_data(self) -> bool:
        """After the members: whether anything but zeros follows the end-of-archive marker (data
        hidden from most extractors). Reading it takes a compressed stream to its checked end."""
        # tarfile's own stream object: it holds what it read ahead of the end marker.
        with self._errors():
            while chunk := self._tar.fileobj.read(CHUNK):
                if chunk.count(0) != len(chunk):
                    return True
        return False

    def _reader(self, read: Read) -> Read:
        """A member's data, its errors made this archive's."""

        def read_member(size: int) -> bytes:
            with self._errors():
                return read(size)

        return read_member

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """tarfile's errors, and those of its headers, as `Malformed` from this archive; an outer
        stream's errors pass through."""
        try:
            yield
        except Malformed as error:
            if error.source is not None:
                raise
            raise Malformed(str(error), self) from None
        except TAR_ERRORS as error:
            raise Malformed(str(error), self) from None


def is_regular(member: tarfile.TarInfo) -> bool:
    """A regular file; tarfile reads unknown member types as files, so they count as such."""
    return member.isreg() or member.type not in tarfile.SUPPORTED_TYPES
