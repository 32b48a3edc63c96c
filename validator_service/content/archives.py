"""The `archive` check: zip and tar archives inspected without being extracted.

What fails an archive: a member path that is absolute (`/x`, `\\x`, `C:x`) or escapes the root with
`..` (backslashes count as separators, as they do for Windows extractors), a control character in
a name, a link whose target is absolute or lies outside the root, a device file, FIFO or socket,
more entries than `max_entries`, more unpacked bytes than `max_unpacked_bytes`, a compression
ratio over `max_compression_ratio`, and a malformed archive (broken records, truncated or corrupt
data, overlapping zip entries, data hidden after a tar's end-of-archive marker).

Paths are resolved lexically. That is sound only while no `..` follows a symlink (the link could
point anywhere the `..` then climbs out of), so a path or link target that goes through a symlink
seen earlier in the archive and then uses `..` fails as well.

Ratio: unpacked bytes over compressed bytes. For a zip, the sum of the entries' declared sizes over
the archive's size. For a compressed tar, the tar stream's bytes over the compressed bytes read so
far, checked on every read, so a bomb is stopped while it streams (the tar format's own headers and
padding, mostly zeros, are not counted). Archives that unpack to at most `RATIO_FLOOR` are never
refused for their ratio: a small file compresses far better than 100:1 without being a bomb.

Nested archives (by name or magic) are not opened: the check warns about them, unless it fails.

While inspecting, the members that other checks need are read, bounded: `depot.json` at the root
(the manifest check), the LICENSE text (the license check), and every pickle, given to the pickle
scanner as a stream.

Memory stays bounded: tar is read front to back in one pass (the service's file streams it from
S3), zip by ranged reads of its central directory (streamed, refused beforehand when its declared
size or entry count is excessive) and of the members read. Nothing is extracted to disk.
"""

from __future__ import annotations

import bz2
import io
import lzma
import re
import stat
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Final, Literal, Protocol, Self

from validator_service.content import CheckResult, Rules, StorageError
from validator_service.content.pickles import PickleScan, scan_pickle
from validator_service.content.sniff import ARCHIVE_KINDS, HEAD_SIZE, is_pickle_name, magic_kind, name_kind

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

CHECK_ID: Final = "archive"
KiB: Final = 1024
MiB: Final = 1024 * KiB

READ_SIZE: Final = 1 * MiB  # the largest single read from the artifact
CHUNK: Final = 64 * KiB  # the usual read: compressed input, decompressed output, member data
MANIFEST_NAME: Final = "depot.json"
MAX_MANIFEST_BYTES: Final = 1 * MiB
LICENSE_NAMES: Final = ("license", "license.txt", "license.md", "copying")  # by preference, any case
MAX_LICENSE_BYTES: Final = 64 * KiB
MAX_LINK_TARGET: Final = 4 * KiB
MAX_CENTRAL_DIRECTORY: Final = 64 * MiB
MAX_EXTENDED_HEADER: Final = 1 * MiB  # a tar's pax or GNU long-name header, which tarfile reads whole
MAX_LZMA_MEMORY: Final = 128 * MiB  # decoder memory (mostly the dictionary) an xz or zip LZMA stream may ask for
MAX_ZIP_SNIFFS: Final = 1000  # zip members (of no interest by name) read for their magic, one ranged read each
RATIO_FLOOR: Final = 1 * MiB
TAR_OVERHEAD: Final = 1024  # per entry: its 512-byte header, and at most 511 bytes of padding
TAR_END_RECORD: Final = 10 * KiB  # two zero blocks, padded to tar's usual 10 KiB record
MAX_REPORTED: Final = 5

CompressionName = Literal["", "gz", "bz2", "xz"]
_COMPRESSION_NAMES: Final[dict[str, str]] = {"": "tar", "gz": "gzip", "bz2": "bzip2", "xz": "xz"}

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE: Final = re.compile(r"[A-Za-z]:")

# Zip records (APPNOTE.TXT 4.3): end of central directory, zip64 locator and end record, central
# directory header, local file header.
_EOCD: Final = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR: Final = struct.Struct("<4sIQI")
_ZIP64_EOCD: Final = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL: Final = struct.Struct("<4sBBHHHHHIIIHHHHHII")
_LOCAL: Final = struct.Struct("<4sHHHHHIIIHH")
_ZIP_STORED, _ZIP_DEFLATED, _ZIP_BZIP2, _ZIP_LZMA = 0, 8, 12, 14
_ZIP_METHODS: Final = frozenset({_ZIP_STORED, _ZIP_DEFLATED, _ZIP_BZIP2, _ZIP_LZMA})
_ZIP_ENCRYPTED: Final = 0x1
_ZIP_UTF8: Final = 0x800
_ZIP64_EXTRA: Final = 0x0001
_UNICODE_PATH_EXTRA: Final = 0x7075

_TAR_EXTENDED_TYPES: Final = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


@dataclass
class ArchiveFindings:
    """What inspecting an archive found: the `archive` check, and what the other checks need from it."""

    check: CheckResult
    manifest: bytes | None = None
    """`depot.json` at the archive's root (at most `MAX_MANIFEST_BYTES`); None if absent."""
    manifest_error: str | None = None
    """Why `depot.json` is there but unusable (too large, not a regular file, unreadable)."""
    license_text: str | None = None
    """The root's LICENSE, LICENSE.txt, LICENSE.md or COPYING (in that preference), first 64 KiB."""
    pickles: list[tuple[str, PickleScan]] = field(default_factory=list)
    """The pickle members scanned, by member name."""
    complete: bool = True
    """False when the inspection stopped early (a limit exceeded, a malformed archive): members
    after that point were not seen, so an absent manifest or license proves nothing."""


class _Malformed(Exception):
    """The archive's structure is broken; the message says how."""


class _Refused(Exception):
    """A limit of the rules is exceeded: the inspection stops."""


class _MemberError(Exception):
    """A zip member's data is not what its records declare (corrupt, truncated, larger)."""


# --- reading the artifact ------------------------------------------------------------------------


class _Source:
    """The artifact, read at an offset or in sequence, never more than `READ_SIZE` at a time.

    It counts the bytes read in sequence (a compressed tar's input, for the ratio), and remembers a
    `StorageError` on its way through: the pickle scanner reads through here, and should it ever
    swallow one, it is raised again after the scan. A storage failure must never become a verdict.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.consumed = 0
        self.storage_error: StorageError | None = None

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes from the current position."""
        try:
            data = self._f.read(READ_SIZE if size < 0 else min(size, READ_SIZE))
        except StorageError as error:
            self.storage_error = error
            raise
        self.consumed += len(data)
        return data

    def read_at(self, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` (fewer only at the end of the file)."""
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


class _Pull(io.RawIOBase):
    """A read-only stream over `read` (up to n bytes per call, b"" at the end), after `head`."""

    def __init__(self, read: Callable[[int], bytes], head: bytes = b"") -> None:
        super().__init__()
        self._read = read
        self._head = head

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        size = min(len(view), CHUNK)
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
        else:
            data = self._read(size)
        view[: len(data)] = data
        return len(data)


def _stream(read: Callable[[int], bytes], head: bytes = b"") -> BinaryIO:
    """A buffered binary file over `read`, as the pickle scanner takes it."""
    return io.BufferedReader(_Pull(read, head), CHUNK)


def _read_up_to(read: Callable[[int], bytes], size: int) -> bytes:
    """`size` bytes from `read`, or fewer at its end, read at most `CHUNK` at a time."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = read(min(size, CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class _Decompressor(Protocol):
    """The incremental interface of bz2's and lzma's decompressors (zlib's is adapted to it)."""

    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


class _Zlib:
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


def _new_decompressor(compression: CompressionName) -> _Decompressor:
    if compression == "gz":
        return _Zlib(16 + zlib.MAX_WBITS)  # gzip framing only, its CRC and length checked at the end
    if compression == "bz2":
        return bz2.BZ2Decompressor()
    # FORMAT_AUTO takes the legacy .lzma format too; the memory limit bounds the dictionary a
    # hostile header may ask for.
    return lzma.LZMADecompressor(lzma.FORMAT_AUTO, memlimit=MAX_LZMA_MEMORY)


class _Decompressed:
    """A gzip, bzip2 or xz file's decompressed bytes, in sequence, at most `size` per read.

    The standard library's file classes are not used: their bzip2 and xz readers decompress a
    whole input chunk at once (unbounded output for a bomb) and ignore trailing garbage. Here,
    concatenated streams are read one after the other as the command-line tools do, zero bytes
    after a stream are padding, and anything else is invalid data.
    """

    def __init__(self, source: _Source, compression: CompressionName) -> None:
        self._source = source
        self._compression = compression
        self._d = _new_decompressor(compression)
        self._carry = b""  # input for the next stream, left over by the previous one

    def read(self, size: int) -> bytes:
        try:
            return self._read(max(1, min(size, READ_SIZE)))
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as error:
            name = _COMPRESSION_NAMES[self._compression]
            raise _Malformed(f"invalid {name} data ({error})") from None

    def _read(self, size: int) -> bytes:
        while True:
            if self._d.eof and not self._next_stream():
                return b""
            data = b""
            if self._d.needs_input:
                data, self._carry = (self._carry, b"") if self._carry else (self._source.read(CHUNK), b"")
                if not data:
                    name = _COMPRESSION_NAMES[self._compression]
                    raise _Malformed(f"the {name} data is truncated (it ends before its end-of-stream marker)")
            output = self._d.decompress(data, size)
            if output:
                return output

    def _next_stream(self) -> bool:
        """After a stream's end: start the next one if more data follows, else say there is none."""
        rest = self._d.unused_data.lstrip(b"\x00")
        while not rest:
            more = self._source.read(CHUNK)
            if not more:
                return False
            rest = more.lstrip(b"\x00")
        self._d = _new_decompressor(self._compression)
        self._carry = rest
        return True


# --- paths and links -----------------------------------------------------------------------------


class _Node:
    __slots__ = ("children", "is_link")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.is_link = False


class _Links:
    """The symlinks seen so far, as a tree of path components, for resolving paths lexically.

    Walking a path goes down this tree alongside, so each step knows in O(1) whether the path so
    far is a symlink, without joining strings (a name may have thousands of components).
    """

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, parts: list[str]) -> None:
        node = self._root
        for part in parts:
            node = node.children.setdefault(part, _Node())
        node.is_link = True

    def walk(self, parts: Iterable[str]) -> tuple[list[str], str | None]:
        """The normalized components of `parts` (`.` and empty dropped, `..` applied), and why the
        path is unsafe ("escapes the root", or goes through a symlink and then `..`), if it is."""
        stack: list[str] = []
        nodes: list[_Node | None] = [self._root]
        through: str | None = None  # the first symlink the path went through
        for part in parts:
            if part in {"", "."}:
                continue
            if part == "..":
                if through is not None:
                    return stack, f"goes through the symlink {_quoted(through)} and then '..'"
                if not stack:
                    return stack, "escapes the root"
                stack.pop()
                nodes.pop()
                continue
            stack.append(part)
            node = nodes[-1]
            child = node.children.get(part) if node is not None else None
            nodes.append(child)
            if child is not None and child.is_link and through is None:
                through = "/".join(stack)
        return stack, None


def _split(path: str) -> list[str]:
    return path.replace("\\", "/").split("/")


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or _DRIVE.match(path) is not None


def _quoted(name: str) -> str:
    """A name quoted for a detail (repr escapes control characters), cut short: uploaders choose names."""
    return repr(name) if len(name) <= 120 else repr(name[:120]) + "..."


def _license_rank(name: str) -> int | None:
    lowered = name.lower()
    return LICENSE_NAMES.index(lowered) if lowered in LICENSE_NAMES else None


# --- what an inspection finds --------------------------------------------------------------------


class _Inspection:
    """What one archive's inspection has found so far, and the limits it applies."""

    def __init__(self, rules: Rules, source: _Source) -> None:
        self.rules = rules
        self.source = source
        self.links = _Links()
        self.problems: list[str] = []
        self.problem_count = 0
        self.nested: list[str] = []
        self.nested_count = 0
        self.unread: list[str] = []
        self.unread_count = 0
        self.entries = 0
        self.unpacked = 0
        self.complete = True
        self.manifest: bytes | None = None
        self.manifest_error: str | None = None
        self.license_text: str | None = None
        self.license_rank = len(LICENSE_NAMES)
        self.pickles: list[tuple[str, PickleScan]] = []

    # findings

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(text)

    def stop(self, text: str) -> None:
        """A problem after which the inspection does not go on."""
        self.problem(text)
        self.complete = False

    def nest(self, name: str) -> None:
        self.nested_count += 1
        if len(self.nested) < MAX_REPORTED:
            self.nested.append(name)

    def not_read(self, name: str) -> None:
        self.unread_count += 1
        if len(self.unread) < MAX_REPORTED:
            self.unread.append(name)

    # limits

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.rules.max_entries:
            raise _Refused(f"more than {self.rules.max_entries} entries (max_entries)")

    def add_unpacked(self, name: str, size: int) -> None:
        self.unpacked += size
        if self.unpacked > self.rules.max_unpacked_bytes:
            raise _Refused(
                f"{_quoted(name)} ({size} bytes) takes the unpacked size to {self.unpacked} bytes, "
                f"over max_unpacked_bytes ({self.rules.max_unpacked_bytes})"
            )

    # paths

    def entry_path(self, name: str) -> list[str] | None:
        """The normalized components of a member's name, or None (a problem noted) if it is unsafe."""
        if not name:
            self.problem("an entry has an empty name")
            return None
        if _CONTROL.search(name):
            self.problem(f"{_quoted(name)} has a control character in its name")
            return None
        if _is_absolute(name):
            self.problem(f"{_quoted(name)} is an absolute path")
            return None
        parts, issue = self.links.walk(_split(name))
        if issue is not None:
            self.problem(f"{_quoted(name)} {issue}")
            return None
        return parts

    def link_target(self, kind: Literal["symlink", "hardlink"], name: str, parts: list[str], target: str) -> None:
        """Check a link's target: a symlink's relative to its own directory, a hardlink's to the root."""
        if _CONTROL.search(target):
            self.problem(f"{kind} {_quoted(name)} has a control character in its target")
        elif _is_absolute(target):
            self.problem(f"{kind} {_quoted(name)} points to the absolute path {_quoted(target)}")
        else:
            base = parts[:-1] if kind == "symlink" else []
            _, issue = self.links.walk([*base, *_split(target)])
            if issue is not None:
                self.problem(f"{kind} {_quoted(name)} -> {_quoted(target)} {issue}")

    # members

    def not_regular(self, parts: list[str] | None) -> None:
        """A member that is not a regular file: if it is the root's depot.json, that is unusable."""
        if parts == [MANIFEST_NAME]:
            self.manifest, self.manifest_error = None, f"{MANIFEST_NAME} at the root is not a regular file"

    def read_member(self, name: str, parts: list[str], size: int, read: Callable[[int], bytes]) -> None:
        """Take from a regular member what the checks need: the manifest, the license text, a pickle
        scan, or a note that it is a nested archive. `read` gives its bytes in order."""
        if parts == [MANIFEST_NAME]:
            # A later copy overrides an earlier one, as it would when extracted.
            if size > MAX_MANIFEST_BYTES:
                self.manifest, self.manifest_error = None, f"{MANIFEST_NAME} is larger than 1 MiB ({size} bytes)"
            else:
                # One byte more than declared: reading to the end checks the size (and a zip's CRC).
                self.manifest, self.manifest_error = _read_up_to(read, size + 1), None
            return
        rank = _license_rank(parts[0]) if len(parts) == 1 else None
        if rank is not None and rank <= self.license_rank:
            self.license_text = _read_up_to(read, MAX_LICENSE_BYTES).decode("utf-8", "replace")
            self.license_rank = rank
            return
        if size == 0:
            return
        head = _read_up_to(read, HEAD_SIZE)
        kind = _member_kind(name, head)
        if kind == "archive":
            self.nest(name)
        elif kind == "pickle":
            scan = scan_pickle(_stream(read, head))
            self.source.raise_stored()
            self.pickles.append((name, scan))

    def findings(self, summary: str) -> ArchiveFindings:
        if self.problem_count:
            more = self.problem_count - len(self.problems)
            listed = "; ".join(self.problems) + (f"; and {more} more" if more else "")
            noun = "problem" if self.problem_count == 1 else "problems"
            check = CheckResult(CHECK_ID, "fail", f"{self.problem_count} {noun}: {listed}")
        elif self.nested_count or self.unread_count:
            notes = []
            if self.nested_count:
                noun = "nested archive" if self.nested_count == 1 else "nested archives"
                notes.append(f"{noun}, not inspected: {_names(self.nested, self.nested_count)}")
            if self.unread_count:
                noun = "entry" if self.unread_count == 1 else "entries"
                notes.append(f"encrypted or unreadable {noun}, not inspected: {_names(self.unread, self.unread_count)}")
            check = CheckResult(CHECK_ID, "warn", "; ".join(notes))
        else:
            check = CheckResult(CHECK_ID, "pass", summary)
        return ArchiveFindings(
            check=check,
            manifest=self.manifest,
            manifest_error=self.manifest_error,
            license_text=self.license_text,
            pickles=self.pickles,
            complete=self.complete,
        )


def _names(names: list[str], count: int) -> str:
    shown = ", ".join(_quoted(name) for name in names)
    return shown + (f" and {count - len(names)} more" if count > len(names) else "")


def _member_kind(name: str, head: bytes) -> Literal["pickle", "archive", "other"]:
    """What a member is, for the checks: pickles by name (unless the magic says otherwise), archives
    by magic or name. A member's magic alone never makes it a pickle: tensor data starts with any
    two bytes, `\\x80\\x02` included."""
    magic = magic_kind(head)
    if magic in ARCHIVE_KINDS:
        return "archive"  # a zip-format PyTorch checkpoint inside an archive included
    if magic in {None, "pickle"} and is_pickle_name(name):
        return "pickle"
    if name_kind(name) in ARCHIVE_KINDS:
        return "archive"
    return "other"


def _summary(state: _Inspection, size: int) -> str:
    noun = "entry" if state.entries == 1 else "entries"
    return f"{state.entries} {noun}, {state.unpacked} bytes unpacked from {size}"


# --- zip -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ZipDirectory:
    start: int  # where the central directory is in the file
    size: int
    count: int  # entries, as the end record declares
    shift: int  # bytes before the archive proper (a self-extractor's stub): offsets are relative to it


@dataclass(frozen=True)
class _ZipEntry:
    name: str
    raw_name: bytes
    parts: list[str]
    is_link: bool
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int  # of its local header, in the file


def inspect_zip(f: BinaryIO, size: int, rules: Rules) -> ArchiveFindings:
    """Inspect the zip archive `f` of `size` bytes: its central directory, then the members needed."""
    source = _Source(f)
    state = _Inspection(rules, source)
    try:
        directory = _zip_directory(source, size)
        _refuse_declared(directory, rules)
        to_read = _zip_entries(state, source, directory)
        _refuse_totals(state, size)
    except _Malformed as error:
        state.stop(f"not a valid zip archive: {error}")
    except _Refused as error:
        state.stop(str(error))
    else:
        for entry in sorted(to_read, key=lambda entry: entry.offset):
            _read_zip_entry(state, source, entry, directory.start)
    return state.findings(_summary(state, size))


def _refuse_declared(directory: _ZipDirectory, rules: Rules) -> None:
    """Refuse, before parsing the central directory, what the end record says is excessive."""
    if directory.count > rules.max_entries:
        raise _Refused(f"the archive declares {directory.count} entries, over max_entries ({rules.max_entries})")
    if directory.size > MAX_CENTRAL_DIRECTORY:
        raise _Refused(f"the central directory is {directory.size} bytes, over the {MAX_CENTRAL_DIRECTORY}-byte limit")
    if directory.count * _CENTRAL.size > directory.size:
        raise _Malformed(f"a {directory.size}-byte central directory cannot hold {directory.count} entries")


def _refuse_totals(state: _Inspection, size: int) -> None:
    """Refuse a zip whose entries' declared sizes add up to too much, or to too high a ratio."""
    rules = state.rules
    if state.unpacked > rules.max_unpacked_bytes:
        raise _Refused(f"unpacks to {state.unpacked} bytes, over max_unpacked_bytes ({rules.max_unpacked_bytes})")
    if state.unpacked > max(rules.max_compression_ratio * size, RATIO_FLOOR):
        raise _Refused(
            f"unpacks to {state.unpacked} bytes from {size}, "
            f"over max_compression_ratio ({rules.max_compression_ratio:g})"
        )


def _zip_directory(source: _Source, size: int) -> _ZipDirectory:
    """Where the central directory is, from the end record (and the zip64 one) at the end of the file."""
    if size < _EOCD.size:
        raise _Malformed("the file is too short")
    tail_start = max(0, size - _EOCD.size - 0xFFFF)  # the record, and a comment of up to 65535 bytes
    tail = source.read_at(tail_start, size - tail_start)
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
        raise _Malformed("no end of central directory record at the end of the file")
    _, disk, directory_disk, disk_entries, entries, directory_size, directory_offset, _ = record
    end = tail_start + position  # the central directory ends where the end records begin
    locator = source.read_at(end - _ZIP64_LOCATOR.size, _ZIP64_LOCATOR.size) if end >= _ZIP64_LOCATOR.size else b""
    if locator[:4] == b"PK\x06\x07":
        disks = _ZIP64_LOCATOR.unpack(locator)[3]
        record_at = end - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size  # it precedes its locator
        zip64 = source.read_at(record_at, _ZIP64_EOCD.size) if record_at >= 0 else b""
        if disks > 1 or len(zip64) < _ZIP64_EOCD.size or zip64[:4] != b"PK\x06\x06":
            raise _Malformed("no zip64 end record where its locator says")
        (_, _, _, _, disk, directory_disk, disk_entries, entries, directory_size, directory_offset) = (
            _ZIP64_EOCD.unpack(zip64)
        )
        end = record_at
    if disk or directory_disk or disk_entries != entries:
        raise _Malformed("archives split over several disks are not supported")
    if directory_size > end:
        raise _Malformed("the central directory is larger than the file")
    start = end - directory_size
    shift = start - directory_offset
    if shift < 0:
        raise _Malformed("the central directory is not where the end record says")
    return _ZipDirectory(start, directory_size, entries, shift)


class _Records:
    """The central directory, read in sequence a chunk at a time, for records that straddle chunks."""

    def __init__(self, source: _Source, start: int, size: int) -> None:
        self._source = source
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
                chunk = self._source.read_at(self._position, min(READ_SIZE, self._unread))
                if not chunk:
                    raise _Malformed("the file ends inside the central directory")
                self._position += len(chunk)
                self._unread -= len(chunk)
                pieces.append(chunk)
                have += len(chunk)
            self._buffer, self._offset = b"".join(pieces), 0
            if have < count:
                raise _Malformed("a central directory record runs past its end")
        data = self._buffer[self._offset : self._offset + count]
        self._offset += count
        return data


def _zip_entries(state: _Inspection, source: _Source, directory: _ZipDirectory) -> list[_ZipEntry]:
    """Check every central directory record; the entries whose data must be read."""
    records = _Records(source, directory.start, directory.size)
    to_read: list[_ZipEntry] = []
    spans: list[tuple[int, int, str]] = []  # where each entry's local header and data lie, at least
    sniffs = 0
    while records.left:
        entry, file_type, span = _zip_record(state, records, directory)
        spans.append(span)
        if entry is None:
            continue
        if (
            entry.is_link
            or file_type in _SPECIAL_TYPES
            or file_type == stat.S_IFDIR
            or entry.name.endswith(("/", "\\"))
        ):
            state.not_regular(entry.parts)
            if entry.is_link:
                state.links.add(entry.parts)
                to_read.append(entry)  # for its target
            continue
        wanted = _zip_wanted(entry.parts, entry.name)
        if not wanted and entry.size > 0 and sniffs < MAX_ZIP_SNIFFS:
            sniffs += 1  # read for its magic: a nested archive under another name
            wanted = True
        if wanted:
            to_read.append(entry)
        elif name_kind(entry.name) in ARCHIVE_KINDS:
            state.nest(entry.name)  # not read: known by its name only
    if state.entries != directory.count:
        raise _Malformed(f"the central directory holds {state.entries} entries, the end record says {directory.count}")
    _check_zip_layout(state, spans, directory.start)
    return to_read


def _zip_record(
    state: _Inspection, records: _Records, directory: _ZipDirectory
) -> tuple[_ZipEntry | None, int, tuple[int, int, str]]:
    """Parse and check the next central directory record: the entry (None if its name is unsafe),
    its file type (from the Unix mode), and the span of its local header and data."""
    fields = _CENTRAL.unpack(records.take(_CENTRAL.size))
    (signature, _, _, _, flags, method, _, _, crc, compressed, size, name_length, extra_length) = fields[:13]
    comment_length, external_attributes, offset = fields[13], fields[16], fields[17]
    if signature != b"PK\x01\x02":
        raise _Malformed(f"bad central directory record after {state.entries} entries")
    state.count_entry()
    raw_name = records.take(name_length)
    extra = records.take(extra_length)
    records.take(comment_length)
    size, compressed, offset = _zip64_values(extra, size, compressed, offset)
    offset += directory.shift
    state.unpacked += size  # checked against the limits once all records are read
    name = _zip_name(state, raw_name, flags)
    parts = state.entry_path(name)
    unicode_name = _unicode_path(extra, raw_name)
    if unicode_name is not None and unicode_name != name:
        state.entry_path(unicode_name)  # the name Info-ZIP's unzip would extract it as
    file_type = stat.S_IFMT(external_attributes >> 16)
    if file_type in {stat.S_IFCHR, stat.S_IFBLK}:
        state.problem(f"{_quoted(name)} is a device file")
    elif file_type == stat.S_IFIFO:
        state.problem(f"{_quoted(name)} is a FIFO")
    elif file_type == stat.S_IFSOCK:
        state.problem(f"{_quoted(name)} is a socket")
    span = (offset, offset + _LOCAL.size + name_length + compressed, name)
    if parts is None:
        return None, file_type, span
    is_link = file_type == stat.S_IFLNK
    return _ZipEntry(name, raw_name, parts, is_link, flags, method, crc, compressed, size, offset), file_type, span


_SPECIAL_TYPES: Final = frozenset({stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK})


def _zip_wanted(parts: list[str], name: str) -> bool:
    """Whether a regular entry is read whatever the sniffing budget: the manifest, a license, a pickle."""
    return parts == [MANIFEST_NAME] or (len(parts) == 1 and _license_rank(parts[0]) is not None) or is_pickle_name(name)


def _zip_name(state: _Inspection, raw_name: bytes, flags: int) -> str:
    """An entry's name decoded as zipfile does: UTF-8 when flagged so, else code page 437."""
    if not flags & _ZIP_UTF8:
        return raw_name.decode("cp437")
    try:
        return raw_name.decode("utf-8")
    except UnicodeDecodeError:
        name = raw_name.decode("utf-8", "replace")
        state.problem(f"{_quoted(name)} is flagged UTF-8 but is not")
        return name


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
                raise _Malformed("a zip64 extra field is too short") from None
            return size, compressed, offset
    raise _Malformed("an entry's zip64 extra field is missing")


def _unicode_path(extra: bytes, raw_name: bytes) -> str | None:
    """The Info-ZIP Unicode Path extra field's name, when it applies to this name (its CRC matches)."""
    for tag, data in _extra_fields(extra):
        applies = len(data) >= 5 and data[0] == 1 and int.from_bytes(data[1:5], "little") == zlib.crc32(raw_name)
        if tag == _UNICODE_PATH_EXTRA and applies:
            return data[5:].decode("utf-8", "replace")
    return None


def _check_zip_layout(state: _Inspection, spans: list[tuple[int, int, str]], directory_start: int) -> None:
    """Entries must not overlap (the trick of non-recursive zip bombs) nor run into the directory.

    Each span is a lower bound (extra fields and data descriptors are not counted), so an overlap
    found is real.
    """
    spans.sort()
    end, previous = 0, ""
    for start, stop, name in spans:
        if start < end:
            state.problem(f"entries {_quoted(previous)} and {_quoted(name)} overlap")
        if stop > directory_start:
            state.problem(f"{_quoted(name)} runs into the central directory")
        if stop > end:
            end, previous = stop, name


def _read_zip_entry(state: _Inspection, source: _Source, entry: _ZipEntry, limit: int) -> None:
    """Read what is needed of one entry: a link's target, or what `read_member` takes."""
    reason = None
    if entry.flags & _ZIP_ENCRYPTED:
        reason = "encrypted"
    elif entry.method not in _ZIP_METHODS:
        reason = f"compressed with method {entry.method}, which cannot be read here"
    if reason is not None:
        if entry.is_link:
            state.problem(f"symlink {_quoted(entry.name)} is {reason}: its target cannot be checked")
        elif entry.parts == [MANIFEST_NAME]:
            state.manifest, state.manifest_error = None, f"{MANIFEST_NAME} is {reason}"
        elif is_pickle_name(entry.name):
            state.pickles.append((entry.name, PickleScan(imports=(), unsafe=(), error=f"{reason}, not scanned")))
        else:
            state.not_read(entry.name)
        return
    try:
        member = _ZipMember(source, entry, limit)
        if not entry.is_link:
            state.read_member(entry.name, entry.parts, entry.size, member.read)
        elif entry.size > MAX_LINK_TARGET:
            state.problem(f"symlink {_quoted(entry.name)} has a target longer than {MAX_LINK_TARGET} bytes")
        else:
            target = _read_up_to(member.read, entry.size + 1).decode("utf-8", "surrogateescape")
            state.link_target("symlink", entry.name, entry.parts, target)
    except _MemberError as error:
        state.problem(f"{_quoted(entry.name)} cannot be read: {error}")
        if entry.parts == [MANIFEST_NAME]:
            state.manifest, state.manifest_error = None, f"{MANIFEST_NAME} cannot be read: {error}"


class _ZipMember:
    """One zip entry's data, decompressed as it is read, never more than the declared size.

    Reading to the end checks the size and the CRC-32; a member that decompresses to more than
    declared is refused as soon as it does.
    """

    def __init__(self, source: _Source, entry: _ZipEntry, limit: int) -> None:
        header = source.read_at(entry.offset, _LOCAL.size)
        if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise _MemberError("there is no local header where the central directory says")
        name_length, extra_length = _LOCAL.unpack(header)[9:]
        # Tools that read local headers (streaming unzippers) would see another name: refuse.
        if source.read_at(entry.offset + _LOCAL.size, name_length) != entry.raw_name:
            raise _MemberError("its local header names another file")
        self._source = source
        self._entry = entry
        self._position = entry.offset + _LOCAL.size + name_length + extra_length
        if self._position + entry.compressed > limit:
            raise _MemberError("its data runs into the central directory")
        self._left = entry.compressed  # compressed bytes not read yet
        self._produced = 0
        self._crc = 0
        self._done = False
        self._error: str | None = None
        self._decompressor: _Decompressor | None = None
        if entry.method == _ZIP_STORED and entry.compressed != entry.size:
            raise _MemberError("it is stored uncompressed, with two different sizes")
        if entry.method == _ZIP_DEFLATED:
            self._decompressor = _Zlib(-zlib.MAX_WBITS)
        elif entry.method == _ZIP_BZIP2:
            self._decompressor = bz2.BZ2Decompressor()
        elif entry.method == _ZIP_LZMA:
            self._decompressor = self._lzma()

    def read(self, size: int) -> bytes:
        """Up to `size` decompressed bytes; b"" at the end (after the size and CRC checks)."""
        if self._error is not None:
            raise _MemberError(self._error)
        try:
            return self._read(size)
        except _MemberError as error:
            self._error = str(error)
            raise
        except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as error:
            self._error = f"its compressed data is corrupt ({error})"
            raise _MemberError(self._error) from None

    def _read(self, size: int) -> bytes:
        want = max(1, min(size, CHUNK))
        while not self._done:
            output = self._pull(want)
            if output is None:
                self._finish()
                break
            if output:
                self._produced += len(output)
                if self._produced > self._entry.size:
                    raise _MemberError(f"it decompresses to more than its declared {self._entry.size} bytes")
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
            raise _MemberError(f"it decompresses to {self._produced} bytes, not the declared {self._entry.size}")
        if self._crc != self._entry.crc:
            raise _MemberError("its CRC-32 does not match")
        self._done = True

    def _compressed(self, size: int) -> bytes:
        size = min(size, self._left)
        if size <= 0:
            return b""
        data = self._source.read_at(self._position, size)
        if not data:
            raise _MemberError("the file ends inside its data")
        self._position += len(data)
        self._left -= len(data)
        return data

    def _lzma(self) -> _Decompressor:
        """Zip's LZMA: a 4-byte header (version, properties size), 5 bytes of properties, raw LZMA1."""
        header = self._compressed(4)
        if len(header) < 4:
            raise _MemberError("its LZMA header is truncated")
        properties = self._compressed(int.from_bytes(header[2:4], "little"))
        if len(properties) != 5 or properties[0] >= 9 * 5 * 5:
            raise _MemberError("its LZMA properties are invalid")
        dictionary = int.from_bytes(properties[1:5], "little")
        if dictionary > MAX_LZMA_MEMORY:  # raw LZMA has no memory limit: bound the dictionary here
            raise _MemberError(f"its LZMA dictionary of {dictionary} bytes is over {MAX_LZMA_MEMORY}")
        lc, lp, pb = properties[0] % 9, properties[0] // 9 % 5, properties[0] // 45
        lzma1 = {"id": lzma.FILTER_LZMA1, "dict_size": dictionary, "lc": lc, "lp": lp, "pb": pb}
        try:
            return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma1])
        except (lzma.LZMAError, ValueError) as error:
            raise _MemberError(f"its LZMA properties are invalid ({error})") from None


# --- tar -----------------------------------------------------------------------------------------


class _TarStream:
    """The tar bytes as tarfile reads them: decompressed, counted, and checked against the ratio.

    The ratio counts the decompressed bytes minus the tar format's own overhead (`TAR_OVERHEAD`
    per entry seen so far, and the end-of-archive record): headers and padding are mostly zeros,
    so a .tar.gz of many small files would otherwise look like a bomb. What a bomb is made of
    (member data, oversized extended headers, zeros after the end marker) counts.

    Once refused, every later read is refused too, so whatever reads through here (tarfile, the
    pickle scanner) cannot carry on past a bomb.
    """

    def __init__(self, read: Callable[[int], bytes], state: _Inspection, compressed: bool) -> None:
        self._read = read
        self._state = state
        self._max_ratio = state.rules.max_compression_ratio if compressed else None  # plain tar: 1:1
        self._replay = b""
        self.delivered = 0
        self._refusal: str | None = None

    def peek(self, size: int) -> bytes:
        """The first `size` bytes (fewer at the end), read again by the next reads."""
        self._replay = _read_up_to(self.read, size)
        return self._replay

    def read(self, size: int, /) -> bytes:
        if self._refusal is not None:
            raise _Refused(self._refusal)
        if self._replay:
            data, self._replay = self._replay[:size], self._replay[size:]
            return data
        data = self._read(max(1, min(size, READ_SIZE)))
        self.delivered += len(data)
        if self._max_ratio is not None:
            unpacked = self.delivered - TAR_OVERHEAD * self._state.entries - TAR_END_RECORD
            consumed = self._state.source.consumed
            if unpacked > max(self._max_ratio * consumed, RATIO_FLOOR):
                self._refusal = (
                    f"{unpacked} bytes unpacked from the first {consumed}, "
                    f"over max_compression_ratio ({self._max_ratio:g})"
                )
                raise _Refused(self._refusal)
        return data

    # The rest of the file protocol tarfile expects of its file object.

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("write")

    def tell(self) -> int:
        return self.delivered - len(self._replay)

    def seek(self, position: int, /) -> int:
        raise io.UnsupportedOperation("seek")

    def close(self) -> None:
        """Nothing to release: the artifact's file belongs to the caller."""


class _TarInfo(tarfile.TarInfo):
    """tarfile's headers, with two things tarfile lets pass in stream mode refused.

    After the first member, tarfile takes a bad or truncated header for the end of the archive and
    stops silently (hiding what follows); and it reads a pax or GNU long-name header's data whole
    into memory, whatever size the header declares.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if 0 < len(buf) < tarfile.BLOCKSIZE:
            raise _Malformed("the archive is truncated inside a header")
        if len(buf) == 0 or buf.count(0) == tarfile.BLOCKSIZE:
            return super().frombuf(buf, encoding, errors)  # the end: tarfile handles it
        try:
            info = super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as error:
            raise _Malformed(f"bad header ({error})") from None
        if info.type in _TAR_EXTENDED_TYPES and info.size > MAX_EXTENDED_HEADER:
            raise _Malformed(f"an extended header of {info.size} bytes, over the {MAX_EXTENDED_HEADER}-byte limit")
        return info


class _TarFile(tarfile.TarFile):
    """A TarFile that forgets each member once returned: in stream mode nothing looks members up
    again, and keeping them all would grow memory with the entry count."""

    members: list[tarfile.TarInfo]

    def next(self) -> tarfile.TarInfo | None:
        member = super().next()
        self.members.clear()
        return member


def inspect_tar(f: BinaryIO, size: int, rules: Rules, compression: CompressionName) -> ArchiveFindings:
    """Inspect the tar archive `f` of `size` bytes (compressed as `compression` says) in one pass.

    A gzip, bzip2 or xz file whose content is not a tar archive gives an `archive` skip.
    """
    source = _Source(f)
    state = _Inspection(rules, source)
    f.seek(0)
    read = source.read if not compression else _Decompressed(source, compression).read
    stream = _TarStream(read, state, compressed=bool(compression))
    try:
        first = stream.peek(tarfile.BLOCKSIZE)
        not_tar = _not_a_tar_header(first) if first else None
        if not_tar is not None and compression:
            return ArchiveFindings(CheckResult(CHECK_ID, "skip", "compressed file, not a tar archive"))
        if not_tar is not None:
            state.stop(f"not a tar archive ({not_tar})")
        elif first:  # (nothing at all is an empty archive, as GNU tar has it)
            _read_tar(state, stream)
    except _Refused as error:
        state.stop(str(error))
    except (_Malformed, tarfile.TarError, ValueError, EOFError, OverflowError) as error:
        # tarfile lets some malformed fields through as ValueError (a pax keyword that is not
        # UTF-8, say): content that breaks the reader is a verdict, not a reason to retry forever.
        state.stop(f"malformed archive: {error}")
    return state.findings(_summary(state, size))


def _read_tar(state: _Inspection, stream: _TarStream) -> None:
    """Go through the members, front to back, then check what follows the end-of-archive marker."""
    with _TarFile.open(fileobj=stream, mode="r|", tarinfo=_TarInfo) as tar:
        while (member := tar.next()) is not None:
            _tar_member(state, tar, member)
        _check_tar_end(state, tar)


def _not_a_tar_header(block: bytes) -> str | None:
    """Why the first block of a stream is not a tar header (None if it is one, or an end marker)."""
    if len(block) < tarfile.BLOCKSIZE:
        return "shorter than one header"
    if block.count(0) == tarfile.BLOCKSIZE:
        return None  # an empty archive
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as error:
        return str(error)
    return None


def _tar_member(state: _Inspection, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Check one member's header, before its data goes by; read the data if a check needs it."""
    state.count_entry()
    name = member.name
    parts = state.entry_path(name)
    regular = member.isreg() or member.type not in tarfile.SUPPORTED_TYPES  # tarfile reads unknown types as files
    if member.issym():
        if parts is not None:
            state.link_target("symlink", name, parts, member.linkname)
            state.links.add(parts)
    elif member.islnk():
        state.link_target("hardlink", name, [], member.linkname)
    elif member.ischr() or member.isblk():
        state.problem(f"{_quoted(name)} is a device file")
    elif member.isfifo():
        state.problem(f"{_quoted(name)} is a FIFO")
    if not regular:
        state.not_regular(parts)
        return
    state.add_unpacked(name, member.size)  # refused here, before tarfile skips or reads the data
    if parts is not None:
        data = tar.extractfile(member)
        if data is not None:
            state.read_member(name, parts, member.size, data.read)


def _check_tar_end(state: _Inspection, tar: tarfile.TarFile) -> None:
    """Read what follows the end-of-archive marker: zeros (padding), or data hidden from extractors.

    Reading it also takes the compressed stream to its end, where its checksum is verified.
    """
    while chunk := tar.fileobj.read(CHUNK):
        if chunk.count(0) != len(chunk):
            state.problem("data follows the end-of-archive marker (not inspected, and hidden from most extractors)")
            return
