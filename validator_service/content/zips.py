"""Zip archives read without `zipfile`: the end records, the central directory, and members' data.

`zipfile` reads the whole central directory into memory and decompresses bzip2 and LZMA members
without an output bound; this reads the directory a chunk at a time (`zip_entries`), bounded
beforehand by what the end record declares, and each member through `ZipMember`, which never
decompresses more than the declared size and checks the CRC-32 at the end. What an entry means
for safety (its path, its type) is judged by the caller (`archives.py`).

Names are decoded as `zipfile` does (UTF-8 when flagged, else code page 437), and sizes and
offsets are taken from the zip64 extra field where the record holds 0xFFFFFFFF.
"""

from __future__ import annotations

import bz2
import lzma
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from backports import zstd

from validator_service.content.streams import (
    CHUNK,
    DECOMPRESSION_ERRORS,
    READ_SIZE,
    DecoderMemory,
    Decompressor,
    Malformed,
    RandomAccess,
    Zlib,
)

# Zip records (APPNOTE.TXT 4.3): end of central directory, zip64 locator and end record, central
# directory header, local file header.
_EOCD: Final = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR: Final = struct.Struct("<4sIQI")
_ZIP64_EOCD: Final = struct.Struct("<4sQHHIIQQQQ")
CENTRAL: Final = struct.Struct("<4sBBHHHHHIIIHHHHHII")
LOCAL: Final = struct.Struct("<4sHHHHHIIIHH")
STORED, DEFLATED, BZIP2, LZMA, ZSTD = 0, 8, 12, 14, 93
METHODS: Final = frozenset({STORED, DEFLATED, BZIP2, LZMA, ZSTD})
_ENCRYPTED: Final = 0x1
_UTF8: Final = 0x800
_ZIP64_EXTRA: Final = 0x0001
_UNICODE_PATH_EXTRA: Final = 0x7075


class MemberError(Exception):
    """A member's data is not what its records declare (corrupt, truncated, larger)."""


@dataclass(frozen=True)
class ZipDirectory:
    """Where the central directory is, as the end records say."""

    start: int  # where the central directory is in the file
    size: int
    count: int  # entries, as the end record declares
    shift: int  # bytes before the archive proper (a self-extractor's stub): offsets are relative to it


@dataclass(frozen=True)
class ZipEntry:
    """One central directory record."""

    name: str
    raw_name: bytes
    unicode_name: str | None  # the Info-ZIP Unicode Path extra field's name, when it applies
    name_is_bad_utf8: bool  # flagged UTF-8, but not
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int  # of its local header, in the file (the shift applied)
    file_type: int  # from the Unix mode (0 when none is given)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & _ENCRYPTED)

    @property
    def is_link(self) -> bool:
        return self.file_type == stat.S_IFLNK

    @property
    def is_dir(self) -> bool:
        return self.file_type == stat.S_IFDIR or self.name.endswith(("/", "\\"))

    @property
    def span(self) -> tuple[int, int]:
        """Where its local header and data lie, at least (extra fields and descriptors not counted)."""
        return self.offset, self.offset + LOCAL.size + len(self.raw_name) + self.compressed


def find_directory(access: RandomAccess) -> ZipDirectory:
    """Where the central directory is, from the end record (and the zip64 one) at the end of the file."""
    size = access.size
    if size < _EOCD.size:
        raise Malformed("the file is too short")
    tail_start = max(0, size - _EOCD.size - 0xFFFF)  # the record, and a comment of up to 65535 bytes
    tail = access.read_at(tail_start, size - tail_start)
    # The last signature whose record (with its comment) ends exactly at the end of the file: one
    # inside a comment, or followed by junk, would let two tools read two different archives.
    position = tail.rfind(b"PK\x05\x06")
    while position >= 0:
        if position + _EOCD.size <= len(tail):
            record = _EOCD.unpack_from(tail, position)
            if position + _EOCD.size + record[7] == len(tail):
                break
        position = tail.rfind(b"PK\x05\x06", 0, position)
    else:
        raise Malformed("no end of central directory record at the end of the file")
    _, disk, directory_disk, disk_entries, entries, directory_size, directory_offset, _ = record
    end = tail_start + position  # the central directory ends where the end records begin
    locator = access.read_at(end - _ZIP64_LOCATOR.size, _ZIP64_LOCATOR.size) if end >= _ZIP64_LOCATOR.size else b""
    if locator[:4] == b"PK\x06\x07":
        disks = _ZIP64_LOCATOR.unpack(locator)[3]
        record_at = end - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size  # it precedes its locator
        zip64 = access.read_at(record_at, _ZIP64_EOCD.size) if record_at >= 0 else b""
        if disks > 1 or len(zip64) < _ZIP64_EOCD.size or zip64[:4] != b"PK\x06\x06":
            raise Malformed("no zip64 end record where its locator says")
        (_, _, _, _, disk, directory_disk, disk_entries, entries, directory_size, directory_offset) = (
            _ZIP64_EOCD.unpack(zip64)
        )
        end = record_at
    if disk or directory_disk or disk_entries != entries:
        raise Malformed("archives split over several disks are not supported")
    if directory_size > end:
        raise Malformed("the central directory is larger than the file")
    start = end - directory_size
    shift = start - directory_offset
    if shift < 0:
        raise Malformed("the central directory is not where the end record says")
    return ZipDirectory(start, directory_size, entries, shift)


def has_end_record(access: RandomAccess) -> bool:
    """Whether the content ends like a zip archive (what `zipfile.is_zipfile` looks at)."""
    try:
        find_directory(access)
    except Malformed:
        return False
    return True


class _Records:
    """The central directory, read in sequence a chunk at a time, for records that straddle chunks."""

    def __init__(self, access: RandomAccess, start: int, size: int) -> None:
        self._access = access
        self._position = start  # of the next chunk to read
        self._unread = size
        self._buffer = b""
        self._offset = 0  # in the buffer

    @property
    def left(self) -> int:
        return self._unread + len(self._buffer) - self._offset

    def take(self, count: int) -> bytes:
        if len(self._buffer) - self._offset < count:
            pieces = [self._buffer[self._offset :]]
            have = len(pieces[0])
            while have < count and self._unread > 0:
                chunk = self._access.read_at(self._position, min(READ_SIZE, self._unread))
                if not chunk:
                    raise Malformed("the file ends inside the central directory")
                self._position += len(chunk)
                self._unread -= len(chunk)
                pieces.append(chunk)
                have += len(chunk)
            self._buffer, self._offset = b"".join(pieces), 0
            if have < count:
                raise Malformed("a central directory record runs past its end")
        data = self._buffer[self._offset : self._offset + count]
        self._offset += count
        return data


def zip_entries(access: RandomAccess, directory: ZipDirectory) -> Iterator[ZipEntry]:
    """The central directory's records, in order, read a chunk at a time.

    `Malformed` when a record is broken, or when there are more or fewer than the end record says.
    """
    records = _Records(access, directory.start, directory.size)
    count = 0
    while records.left:
        fields = CENTRAL.unpack(records.take(CENTRAL.size))
        (signature, _, _, _, flags, method, _, _, crc, compressed, size, name_length, extra_length) = fields[:13]
        comment_length, external_attributes, offset = fields[13], fields[16], fields[17]
        if signature != b"PK\x01\x02":
            raise Malformed(f"bad central directory record after {count} entries")
        count += 1
        if count > directory.count:
            break
        raw_name = records.take(name_length)
        extra = records.take(extra_length)
        records.take(comment_length)
        size, compressed, offset = _zip64_values(extra, size, compressed, offset)
        name, bad_utf8 = _decode_name(raw_name, flags)
        yield ZipEntry(
            name, raw_name, _unicode_path(extra, raw_name), bad_utf8, flags, method, crc, compressed, size,
            offset + directory.shift, stat.S_IFMT(external_attributes >> 16),
        )  # fmt: skip
    if count != directory.count:
        raise Malformed(f"the central directory holds {count} entries or more, the end record says {directory.count}")


def _decode_name(raw_name: bytes, flags: int) -> tuple[str, bool]:
    """An entry's name decoded as zipfile does: UTF-8 when flagged so, else code page 437."""
    if not flags & _UTF8:
        return raw_name.decode("cp437"), False
    try:
        return raw_name.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw_name.decode("utf-8", "replace"), True


def _extra_fields(extra: bytes) -> Iterable[tuple[int, bytes]]:
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, position)
        data = extra[position + 4 : position + 4 + length]
        if len(data) < length:
            return  # a truncated field: ignored, as zipfile does
        yield tag, data
        position += 4 + length


def _zip64_values(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """Sizes and offset, taken from the zip64 extra field where the record holds 0xFFFFFFFF."""
    wanted = [value == 0xFFFFFFFF for value in (size, compressed, offset)]
    if not any(wanted):
        return size, compressed, offset
    for tag, data in _extra_fields(extra):
        if tag == _ZIP64_EXTRA:
            values = iter(struct.unpack_from(f"<{len(data) // 8}Q", data))
            try:
                size = next(values) if wanted[0] else size
                compressed = next(values) if wanted[1] else compressed
                offset = next(values) if wanted[2] else offset
            except StopIteration:
                raise Malformed("a zip64 extra field is too short") from None
            return size, compressed, offset
    raise Malformed("an entry's zip64 extra field is missing")


def _unicode_path(extra: bytes, raw_name: bytes) -> str | None:
    """The Info-ZIP Unicode Path extra field's name, when it applies to this name (its CRC matches)."""
    for tag, data in _extra_fields(extra):
        applies = len(data) >= 5 and data[0] == 1 and int.from_bytes(data[1:5], "little") == zlib.crc32(raw_name)
        if tag == _UNICODE_PATH_EXTRA and applies:
            return data[5:].decode("utf-8", "replace")
    return None


def unreadable_reason(entry: ZipEntry) -> str | None:
    """Why a member's data cannot be read here (encrypted, an unknown method); None if it can."""
    if entry.encrypted:
        return "encrypted"
    if entry.method not in METHODS:
        return f"compressed with method {entry.method}, which Depot cannot open"
    return None


class ZipMember:
    """One entry's data, decompressed as it is read, never more than the declared size.

    Reading to the end checks the size and the CRC-32; a member that decompresses to more than
    declared is refused as soon as it does. `data_offset` is where its data starts in the file.
    An LZMA or zstd member's decoder takes its memory from `memory` until `close`.
    """

    def __init__(self, access: RandomAccess, entry: ZipEntry, limit: int, memory: DecoderMemory) -> None:
        header = access.read_at(entry.offset, LOCAL.size)
        if len(header) < LOCAL.size or header[:4] != b"PK\x03\x04":
            raise MemberError("there is no local header where the central directory says")
        name_length, extra_length = LOCAL.unpack(header)[9:]
        # Tools that read local headers (streaming unzippers) would see another name: refuse.
        if access.read_at(entry.offset + LOCAL.size, name_length) != entry.raw_name:
            raise MemberError("its local header names another file")
        self._access = access
        self._entry = entry
        self.data_offset = entry.offset + LOCAL.size + name_length + extra_length
        if self.data_offset + entry.compressed > limit:
            raise MemberError("its data runs into the central directory")
        self._position = self.data_offset
        self._left = entry.compressed  # compressed bytes not read yet
        self._produced = 0
        self._crc = 0
        self._done = False
        self._error: str | None = None
        self.started = False  # whether `read` was called
        self._decompressor: Decompressor | None = None
        if entry.method == STORED and entry.compressed != entry.size:
            raise MemberError("it is stored uncompressed, with two different sizes")
        self._memory = memory
        self._share = memory.take() if entry.method in {LZMA, ZSTD} else 0
        try:
            self._decompressor = self._new_decompressor()
        except BaseException:
            self.close()
            raise

    def _new_decompressor(self) -> Decompressor | None:
        method = self._entry.method
        if method == DEFLATED:
            return Zlib(-zlib.MAX_WBITS)
        if method == BZIP2:
            return bz2.BZ2Decompressor()
        if method == LZMA:
            return self._lzma()
        if method == ZSTD:
            window_log = self._share.bit_length() - 1  # the window is what a zstd decoder's memory holds
            return zstd.ZstdDecompressor(options={zstd.DecompressionParameter.window_log_max: window_log})
        return None  # stored

    def close(self) -> None:
        """Give the decoder's memory back."""
        self._memory.give_back(self._share)
        self._share = 0

    def read(self, size: int) -> bytes:
        """Up to `size` decompressed bytes; b"" at the end (after the size and CRC checks)."""
        self.started = True
        if self._error is not None:
            raise MemberError(self._error)
        try:
            return self._read(size)
        except MemberError as error:
            self._error = str(error)
            raise
        except DECOMPRESSION_ERRORS as error:
            self._error = f"its compressed data is corrupt ({error})"
            raise MemberError(self._error) from None

    def _read(self, size: int) -> bytes:
        want = max(1, min(size, READ_SIZE))
        while not self._done:
            output = self._pull(want)
            if output is None:
                self._finish()
                break
            if output:
                self._produced += len(output)
                if self._produced > self._entry.size:
                    raise MemberError(f"it decompresses to more than its declared {self._entry.size} bytes")
                self._crc = zlib.crc32(output, self._crc)
                return output
        return b""

    def _pull(self, want: int) -> bytes | None:
        """Some decompressed bytes (maybe none yet), or None once the data is over."""
        if self._decompressor is None:
            return self._compressed(want) or None
        if self._decompressor.eof:
            return None
        data = b""
        if self._decompressor.needs_input:
            data = self._compressed(CHUNK)
            if not data:
                return None
        return self._decompressor.decompress(data, want)

    def _finish(self) -> None:
        if self._produced != self._entry.size:
            raise MemberError(f"it decompresses to {self._produced} bytes, not the declared {self._entry.size}")
        if self._crc != self._entry.crc:
            raise MemberError("its CRC-32 does not match")
        self._done = True

    def _compressed(self, size: int) -> bytes:
        size = min(size, self._left)
        if size <= 0:
            return b""
        data = self._access.read_at(self._position, size)
        if not data:
            raise MemberError("the file ends inside its data")
        self._position += len(data)
        self._left -= len(data)
        return data

    def _lzma(self) -> Decompressor:
        """Zip's LZMA: a 4-byte header (version, properties size), 5 bytes of properties, raw LZMA1."""
        header = self._compressed(4)
        if len(header) < 4:
            raise MemberError("its LZMA header is truncated")
        properties = self._compressed(int.from_bytes(header[2:4], "little"))
        if len(properties) != 5 or properties[0] >= 9 * 5 * 5:
            raise MemberError("its LZMA properties are invalid")
        dictionary = int.from_bytes(properties[1:5], "little")
        if dictionary > self._share:  # raw LZMA has no memory limit of its own: bound the dictionary here
            raise MemberError(f"its LZMA dictionary of {dictionary} bytes is over {self._share}")
        lc, lp, pb = properties[0] % 9, properties[0] // 9 % 5, properties[0] // 45
        lzma1 = {"id": lzma.FILTER_LZMA1, "dict_size": dictionary, "lc": lc, "lp": lp, "pb": pb}
        try:
            return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma1])
        except (lzma.LZMAError, ValueError) as error:
            raise MemberError(f"its LZMA properties are invalid ({error})") from None
