"""An artifact's content inspected all the way down: archives and compressed streams inside each
other are opened, and every stream in them is checked as the artifact itself would be.

What is checked in every stream (the artifact, each member, what each compressed stream holds):
- it is scanned as a pickle from its first byte, whatever its name (`pickles.scan_pickle`);
- what its first bytes say it is decides what else is done: a zip or tar archive is opened and
  its members are inspected in turn; a gzip, bzip2, xz or zstd stream is decompressed and what it
  holds is inspected as if it were stored plain (a `.tar.gz` is a tar inside a gzip stream); a
  safetensors file has its header checked; a NumPy `.npy` of objects has its pickle scanned; a 7z
  or rar archive cannot be opened here, and is reported so.

What fails the `archive` check, at any depth: a member path that is absolute (`/x`, `\\x`, `C:x`)
or escapes its archive's root with `..` (backslashes count as separators, as they do for Windows
extractors), a control character in a name, a link whose target is absolute or lies outside the
root, a device file, FIFO or socket, a malformed archive or compressed stream (broken records,
truncated or corrupt data, overlapping zip entries, data hidden after a tar's end-of-archive
marker), and the limits of the rules. Paths are resolved lexically, which is sound only while no
`..` follows a symlink: a path that goes through a symlink seen earlier and then uses `..` fails.

Limits are shared by everything nested, so nesting cannot multiply a bomb: every entry of every
archive counts toward `max_entries`; every member's size, and what a compressed single file
unpacks to, toward `max_unpacked_bytes`; and all of that together may not exceed
`max_compression_ratio` times the artifact's size (unpacking to at most `RATIO_FLOOR` is never
refused: small files compress far better than 100:1). Each compressed stream is also held to the
ratio while it streams, so a bomb is stopped early. Streams are nested at most `MAX_DEPTH` deep.

What cannot be inspected (nested deeper than `MAX_DEPTH`, a 7z or rar archive, an encrypted zip
member or one compressed with a method Depot cannot read) is never passed silently: it fails the
`archive` check under `pickle_policy: reject`, and is a warning under `warn` and `allow`.

The artifact's own archive (itself, or what its compression layers hold) is its root: its
`depot.json` is the manifest and its LICENSE file the license text. Nested archives have neither.

Memory stays bounded whatever the sizes: a tar is read front to back in one pass, a zip by ranged
reads of its central directory (streamed, refused beforehand when its declared size or entry
count is excessive) and of its members in the order they are stored; a stream that must be read
twice, or a zip inside a stream that cannot be read at random, is kept in a temporary file past
`streams.SPOOL_MEMORY` bytes (never more than the unpacked-size limit); decompressors are bounded
in output and in memory (`streams.DecoderMemory`). Nothing is extracted.
"""

from __future__ import annotations

import re
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from validator_service.content import CheckResult, PicklePolicy, Rules
from validator_service.content.pickles import PickleScan, scan_pickle
from validator_service.content.safetensors import check_safetensors
from validator_service.content.sniff import COMPRESSED_KINDS, HEAD_SIZE, UNOPENABLE_KINDS, Kind, sniff
from validator_service.content.streams import (
    CHUNK,
    RATIO_FLOOR,
    Compression,
    DecoderMemory,
    Decompressed,
    FileAccess,
    Malformed,
    RandomAccess,
    Read,
    ReadOnly,
    Refused,
    Replay,
    Window,
    read_up_to,
    sequential,
    skip_all,
    skip_up_to,
    spool,
)
from validator_service.content.tars import TarReader, is_regular
from validator_service.content.zips import (
    CENTRAL,
    STORED,
    MemberError,
    ZipDirectory,
    ZipEntry,
    ZipMember,
    find_directory,
    has_end_record,
    unreadable_reason,
    zip_entries,
)

CHECK_ID: Final = "archive"
MAX_DEPTH: Final = 5  # streams inside containers inside containers ...: the artifact is at depth 0
MANIFEST_NAME: Final = "depot.json"
MAX_MANIFEST_BYTES: Final = 1024 * 1024
LICENSE_NAMES: Final = ("license", "license.txt", "license.md", "copying")  # by preference, any case
MAX_LICENSE_BYTES: Final = 64 * 1024
MAX_LINK_TARGET: Final = 4 * 1024
MAX_CENTRAL_DIRECTORY: Final = 64 * 1024 * 1024
MAX_REPORTED: Final = 5
NESTING: Final = "!/"  # between an archive's path and a member's name: "bundle.zip!/model.pt!/archive/data.pkl"

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE: Final = re.compile(r"[A-Za-z]:")
_SPECIAL_TYPES: Final = frozenset({stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK})
_COMPRESSION_SUFFIXES: Final = (
    *((suffix, ".tar") for suffix in (".tgz", ".tbz2", ".tbz", ".txz")),
    *((suffix, "") for suffix in (".gz", ".bz2", ".xz", ".lzma", ".zst")),
)
_COMPRESSIONS: Final[dict[Kind, Compression]] = {"gzip": "gzip", "bzip2": "bzip2", "xz": "xz", "zstd": "zstd"}


@dataclass
class Findings:
    """What inspecting an artifact found: the `archive` check, and what the other checks need."""

    archive: CheckResult
    pickles: list[tuple[str, PickleScan]] = field(default_factory=list)
    """Every stream that is a pickle, by its path ("" for the artifact itself)."""
    safetensors: list[tuple[str, CheckResult]] = field(default_factory=list)
    """Every safetensors file's header check, by its path."""
    opened: bool = False
    """Whether anything was opened (an archive or a compressed stream)."""
    root_is_archive: bool = False
    """Whether the artifact (through its compression layers, if any) is an archive."""
    manifest: bytes | None = None
    """`depot.json` at the root archive's root (at most `MAX_MANIFEST_BYTES`); None if absent."""
    manifest_error: str | None = None
    """Why `depot.json` is there but unusable (too large, not a regular file, unreadable)."""
    license_text: str | None = None
    """The root's LICENSE, LICENSE.txt, LICENSE.md or COPYING (in that preference), first 64 KiB."""
    complete: bool = True
    """False when the inspection stopped early (a limit exceeded, a malformed root archive):
    what came after was not seen, so an absent manifest, license or pickle proves nothing."""


def inspect_artifact(access: FileAccess, filename: str | None, rules: Rules) -> Findings:
    """Inspect the artifact that `access` reads (named `filename` by its uploader) with `rules`."""
    inspection = _Inspection(rules, access.size)
    artifact = _Content("", filename, access.size, lambda: sequential(access), access=access)
    try:
        inspection.inspect(artifact, depth=0, root=True)
    except Refused as error:
        inspection.stop(str(error))
    return inspection.findings()


# --- what is inspected ---------------------------------------------------------------------------


@dataclass
class _Content:
    """One stream to inspect: how findings name it, its own name, its size if known, and how to read it.

    `open` gives a reader from its first byte, as many times as needed: over `access` when it can
    be read at random, by opening a zip member again, or by replaying a one-pass stream (`replay`).
    """

    path: str
    name: str | None
    size: int | None
    open: Callable[[], Read]
    access: RandomAccess | None = None
    replay: Replay | None = None
    layer: Decompressed | None = None  # the compressed stream that holds it, if it is what one holds

    def keep_for_another_read(self, keep: bool) -> None:
        """Whether the stream will be read from its start again after the next reader."""
        if self.replay is not None:
            self.replay.keep = keep


@dataclass
class _Archive:
    """One archive being read: its path, its symlinks so far, and whether it is the root archive."""

    path: str
    root: bool
    links: _Links = field(default_factory=lambda: _Links())  # noqa: PLW0108 - defined below

    def member(self, name: str) -> str:
        return f"{self.path}{NESTING}{name}" if self.path else name


class _Inspection:
    """What the inspection of one artifact has found so far, and the limits it applies."""

    def __init__(self, rules: Rules, artifact_size: int) -> None:
        self.rules = rules
        self.artifact_size = artifact_size
        self.memory = DecoderMemory()
        self.problems = _Listing()
        self.uninspected = _Listing()
        self.opened: list[str] = []
        self.entries = 0
        self.unpacked = 0
        self.complete = True
        self.root_is_archive = False
        self.pickles: list[tuple[str, PickleScan]] = []
        self.safetensors: list[tuple[str, CheckResult]] = []
        self.manifest: bytes | None = None
        self.manifest_error: str | None = None
        self.license_text: str | None = None
        self.license_rank = len(LICENSE_NAMES)

    # findings

    def problem(self, text: str) -> None:
        self.problems.add(text)

    def stop(self, text: str) -> None:
        """A problem after which the inspection does not go on."""
        self.problem(text)
        self.complete = False

    def cannot_inspect(self, path: str, reason: str) -> None:
        self.uninspected.add(f"{_quoted(path or 'the artifact')} ({reason})")

    def findings(self) -> Findings:
        return Findings(
            archive=self._archive_check(),
            pickles=self.pickles,
            safetensors=self.safetensors,
            opened=bool(self.opened),
            root_is_archive=self.root_is_archive,
            manifest=self.manifest,
            manifest_error=self.manifest_error,
            license_text=self.license_text,
            complete=self.complete,
        )

    def _archive_check(self) -> CheckResult:
        policy: PicklePolicy = self.rules.pickle_policy
        not_inspected = f"not inspected: {self.uninspected}" if self.uninspected.count else ""
        if self.problems.count:
            noun = "problem" if self.problems.count == 1 else "problems"
            detail = f"{self.problems.count} {noun}: {self.problems}"
            return CheckResult(CHECK_ID, "fail", "; ".join(filter(None, [detail, not_inspected])))
        if self.uninspected.count:
            # Content that could not be opened may hold anything: never passed silently.
            return CheckResult(CHECK_ID, "fail" if policy == "reject" else "warn", not_inspected)
        if not self.opened:
            return CheckResult(CHECK_ID, "skip", "not an archive")
        noun = "entry" if self.entries == 1 else "entries"
        summary = f"{self.entries} {noun}, {self.unpacked} bytes unpacked from {self.artifact_size}"
        return CheckResult(CHECK_ID, "pass", f"{summary}; opened: {_names(self.opened)}")

    # limits

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.rules.max_entries:
            raise Refused(f"more than {self.rules.max_entries} entries (max_entries)")

    def add_unpacked(self, size: int, cause: str) -> None:
        """Count `size` more unpacked bytes (`cause`: a member and its size, a zip's entries, a
        compressed file), against the limits of all that is nested."""
        self.unpacked += size
        rules = self.rules
        if self.unpacked > rules.max_unpacked_bytes:
            limit = rules.max_unpacked_bytes
            raise Refused(
                f"{cause}: the unpacked size comes to {self.unpacked} bytes, over max_unpacked_bytes ({limit})"
            )
        if self.unpacked > max(rules.max_compression_ratio * self.artifact_size, RATIO_FLOOR):
            raise Refused(
                f"{cause}: the unpacked size comes to {self.unpacked} bytes from {self.artifact_size}, "
                f"over max_compression_ratio ({rules.max_compression_ratio:g})"
            )

    # paths

    def entry_path(self, archive: _Archive, name: str) -> list[str] | None:
        """The normalized components of a member's name, or None (a problem noted) if it is unsafe."""
        shown = _quoted(archive.member(name))
        if not name:
            self.problem(f"an entry of {_quoted(archive.path or 'the archive')} has an empty name")
            return None
        if _CONTROL.search(name):
            self.problem(f"{shown} has a control character in its name")
            return None
        if _is_absolute(name):
            self.problem(f"{shown} is an absolute path")
            return None
        parts, issue = archive.links.walk(_split(name))
        if issue is not None:
            self.problem(f"{shown} {issue}")
            return None
        return parts

    def link_target(
        self, archive: _Archive, kind: Literal["symlink", "hardlink"], name: str, parts: list[str], target: str
    ) -> None:
        """Check a link's target: a symlink's relative to its own directory, a hardlink's to the root."""
        shown = _quoted(archive.member(name))
        if _CONTROL.search(target):
            self.problem(f"{kind} {shown} has a control character in its target")
        elif _is_absolute(target):
            self.problem(f"{kind} {shown} points to the absolute path {_quoted(target)}")
        else:
            base = parts[:-1] if kind == "symlink" else []
            _, issue = archive.links.walk([*base, *_split(target)])
            if issue is not None:
                self.problem(f"{kind} {shown} -> {_quoted(target)} {issue}")

    # streams

    def inspect(self, content: _Content, depth: int, root: bool, in_compression: bool = False) -> Kind:
        """Check one stream with everything that applies to it (see the module docstring); its kind.

        `root`: the stream is the artifact, or what its compression layers hold. `in_compression`:
        it is what a compressed stream holds, so a tar here is one with it (a `.tar.gz`), one level.
        """
        head = read_up_to(content.open(), HEAD_SIZE)
        kind = sniff(head, content.name)
        if kind == "other" and depth == 0 and content.access is not None and has_end_record(content.access):
            kind = "zip"  # data before a zip (a self-extractor, or a pickle and a zip in one file): zipfile opens it
        content.keep_for_another_read(kind != "other")  # the pickle scan, then one more reader
        self._scan_pickle(content)
        content.keep_for_another_read(False)  # whatever reads it next is the last
        if kind in {"zip", "tar"} | COMPRESSED_KINDS:
            levels = 0 if kind == "tar" and in_compression else 1
            if depth + levels > MAX_DEPTH:
                self.cannot_inspect(content.path, f"nested more than {MAX_DEPTH} levels deep")
                return kind
            if kind == "zip":
                self._zip(content, depth + 1, root)
            elif kind == "tar":
                self._tar(content, depth + levels, root)
            else:
                self._compressed(content, _COMPRESSIONS[kind], depth + 1, root)
        elif kind in UNOPENABLE_KINDS:
            self.cannot_inspect(content.path, f"a {kind} archive, which Depot cannot open")
        elif kind == "npy":
            self._npy(content)
        elif kind == "safetensors":
            self.safetensors.append((content.path, check_safetensors(content.open(), content.size)))
        return kind

    def _scan_pickle(self, content: _Content) -> None:
        scan = scan_pickle(ReadOnly(content.open()), content.size)
        if scan.is_pickle:
            self.pickles.append((content.path, scan))

    def _npy(self, content: _Content) -> None:
        """A NumPy array file: an array of objects (`np.load(..., allow_pickle=True)`) is a pickle
        stored after the header. The data is scanned whatever the header says: numbers are not a
        pickle, and the header's own text is never evaluated."""
        read = content.open()
        prefix = read_up_to(read, 8)  # the magic, then the format's major and minor version
        major = prefix[6] if len(prefix) == 8 else 0
        if major not in {1, 2, 3}:
            return  # numpy refuses it: nothing is loaded
        length_field = read_up_to(read, 2 if major == 1 else 4)
        header_size = int.from_bytes(length_field, "little")
        if content.size is not None and 8 + len(length_field) + header_size > content.size:
            return  # numpy refuses it too
        if skip_up_to(read, header_size) < header_size:
            return
        scan = scan_pickle(ReadOnly(read))
        if scan.is_pickle:
            self.pickles.append((content.path, scan))

    def _compressed(self, content: _Content, compression: Compression, depth: int, root: bool) -> None:
        """A compressed stream: what it holds is inspected as if stored plain, then read to its end."""
        where = _quoted(content.path or "the artifact")
        self.opened.append(f"{where} ({compression})")
        layer = Decompressed(
            content.open(), compression, max_ratio=self.rules.max_compression_ratio, memory=self.memory
        )
        replay = Replay(layer.read)
        inner = _Content(content.path, _uncompressed_name(content.name), None, replay.open, replay=replay, layer=layer)
        try:
            if self.inspect(inner, depth, root, in_compression=True) in {"zip", "tar"}:
                skip_all(layer.read)  # its members were counted; this reads the stream to its checked end
            else:
                # A compressed single file: all of it is read, and what it unpacks to counts.
                unpacked = f"{where} decompressed"
                self.add_unpacked(layer.delivered, unpacked)
                while chunk := layer.read(CHUNK):
                    self.add_unpacked(len(chunk), unpacked)
        except Malformed as error:
            if error.source is not layer:
                raise
            self.problem(f"{where}: {error}")
            if root:
                self.complete = False
        finally:
            replay.close()
            layer.close()

    # --- zip ---

    def _zip(self, content: _Content, depth: int, root: bool) -> None:
        """A zip archive: its central directory, then every member in the order they are stored."""
        archive = _Archive(content.path, root)
        self.opened.append(_quoted(content.path or "the artifact"))
        if root:
            self.root_is_archive = True
        where = f"{_quoted(content.path)}: " if content.path else ""
        access, copy = content.access, None
        try:
            if access is None:
                access, copy = spool(content.open(), self.rules.max_unpacked_bytes)
            directory = find_directory(access)
            self._refuse_declared(directory, where)
            to_read = self._zip_directory(archive, access, directory.start, zip_entries(access, directory))
            for entry, parts in sorted(to_read, key=lambda item: item[0].offset):
                self._zip_member(archive, (access, directory.start), entry, parts, depth)
        except Malformed as error:
            if error.source is not None:  # from the stream that holds this archive
                raise
            self.problem(f"{where}not a valid zip archive: {error}")
            if root:
                self.complete = False
        finally:
            if copy is not None:
                copy.close()

    def _refuse_declared(self, directory: ZipDirectory, where: str) -> None:
        """Refuse, before parsing the central directory, what the end record says is excessive."""
        declared, max_entries = directory.count, self.rules.max_entries
        if declared > max_entries - self.entries:
            counted = f" ({self.entries} counted before it)" if self.entries else ""
            raise Refused(f"{where}the archive declares {declared} entries{counted}, over max_entries ({max_entries})")
        if directory.size > MAX_CENTRAL_DIRECTORY:
            raise Refused(f"{where}the central directory is {directory.size} bytes, over {MAX_CENTRAL_DIRECTORY}")
        if declared * CENTRAL.size > directory.size:
            raise Malformed(f"a {directory.size}-byte central directory cannot hold {declared} entries")

    def _zip_directory(
        self, archive: _Archive, access: RandomAccess, directory_start: int, entries: Iterable[ZipEntry]
    ) -> list[tuple[ZipEntry, list[str]]]:
        """Check every central directory record, and the limits; the entries whose data must be read."""
        to_read: list[tuple[ZipEntry, list[str]]] = []
        spans: list[tuple[int, int, str]] = []
        declared = 0
        for entry in entries:
            self.count_entry()
            shown = _quoted(archive.member(entry.name))
            spans.append((*entry.span, entry.name))
            declared += entry.size
            if entry.name_is_bad_utf8:
                self.problem(f"{shown} is flagged UTF-8 but is not")
            parts = self.entry_path(archive, entry.name)
            if entry.unicode_name is not None and entry.unicode_name != entry.name:
                self.entry_path(archive, entry.unicode_name)  # the name Info-ZIP's unzip would extract it as
            if entry.file_type in {stat.S_IFCHR, stat.S_IFBLK}:
                self.problem(f"{shown} is a device file")
            elif entry.file_type == stat.S_IFIFO:
                self.problem(f"{shown} is a FIFO")
            elif entry.file_type == stat.S_IFSOCK:
                self.problem(f"{shown} is a socket")
            if parts is None:
                continue
            if entry.is_link:
                archive.links.add(parts)
                to_read.append((entry, parts))  # for its target
            elif entry.file_type in _SPECIAL_TYPES or entry.is_dir:
                self._not_regular(archive, parts)
            else:
                to_read.append((entry, parts))
        self._check_layout(archive, spans, directory_start)
        self.add_unpacked(declared, f"the entries of {_quoted(archive.path or 'the archive')}")
        return to_read

    def _check_layout(self, archive: _Archive, spans: list[tuple[int, int, str]], directory_start: int) -> None:
        """Entries must not overlap (the trick of non-recursive zip bombs) nor run into the directory.

        Each span is a lower bound (extra fields and data descriptors are not counted), so an overlap
        found is real.
        """
        spans.sort()
        end, previous = 0, ""
        for start, stop, name in spans:
            if start < end:
                self.problem(f"entries {_quoted(archive.member(previous))} and {_quoted(archive.member(name))} overlap")
            if stop > directory_start:
                self.problem(f"{_quoted(archive.member(name))} runs into the central directory")
            if stop > end:
                end, previous = stop, name

    def _zip_member(
        self, archive: _Archive, zip_: tuple[RandomAccess, int], entry: ZipEntry, parts: list[str], depth: int
    ) -> None:
        """Read what is needed of one entry: a link's target, or the member inspected as a stream.

        `zip_` is the archive's content and where its central directory starts (where data must end).
        """
        access, limit = zip_
        path = archive.member(entry.name)
        reason = unreadable_reason(entry)
        if reason is not None:
            if entry.is_link:
                self.problem(f"symlink {_quoted(path)} is {reason}: its target cannot be checked")
            elif archive.root and parts == [MANIFEST_NAME]:
                self.manifest, self.manifest_error = None, f"{MANIFEST_NAME} is {reason}"
            else:
                self.cannot_inspect(path, reason)
            return
        opened: list[ZipMember] = []

        def open_member() -> Read:
            """The member's data from its start, decompressed again (and CRC-checked) each time."""
            if len(opened) == 1 and not opened[0].started:
                return opened[0].read
            for member in opened:  # one reader at a time: their decoder memory goes back
                member.close()
            member = ZipMember(access, entry, limit, self.memory)
            opened.append(member)
            return member.read

        try:
            first = ZipMember(access, entry, limit, self.memory)  # checks the local header before anything
            opened.append(first)
            if entry.is_link:
                self._zip_link(archive, entry, parts, first.read)
                return
            stored = Window(access, first.data_offset, entry.size) if entry.method == STORED else None
            self._member(archive, parts, _Content(path, entry.name, entry.size, open_member, access=stored), depth)
        except MemberError as error:
            self.problem(f"{_quoted(path)} cannot be read: {error}")
            if archive.root and parts == [MANIFEST_NAME]:
                self.manifest, self.manifest_error = None, f"{MANIFEST_NAME} cannot be read: {error}"
        finally:
            for member in opened:
                member.close()

    def _zip_link(self, archive: _Archive, entry: ZipEntry, parts: list[str], read: Read) -> None:
        if entry.size > MAX_LINK_TARGET:
            self.problem(
                f"symlink {_quoted(archive.member(entry.name))} has a target longer than {MAX_LINK_TARGET} bytes"
            )
            return
        target = read_up_to(read, entry.size + 1).decode("utf-8", "surrogateescape")
        self.link_target(archive, "symlink", entry.name, parts, target)

    # --- tar ---

    def _tar(self, content: _Content, depth: int, root: bool) -> None:
        """A tar archive, in one pass: each member's header is checked before its data goes by."""
        archive = _Archive(content.path, root)
        self.opened.append(_quoted(content.path or "the artifact"))
        if root:
            self.root_is_archive = True
        where = f"{_quoted(content.path)}: " if content.path else ""
        # Inside a compressed stream, the tar format's own headers and padding (mostly zeros) do
        # not count toward that stream's ratio: many small files are not a bomb.
        tar = TarReader(content.open(), content.layer.allow if content.layer is not None else None)
        try:
            for member, read in tar.members():
                self._tar_member(archive, member, read, depth)
            if tar.trailing_data():
                self.problem(
                    f"{where}data follows the end-of-archive marker (not inspected, and hidden from most extractors)"
                )
        except Malformed as error:
            if error.source is not tar:
                raise
            self.problem(f"{where}malformed archive: {error}")
            if root:
                self.complete = False

    def _tar_member(self, archive: _Archive, member: tarfile.TarInfo, read: Read | None, depth: int) -> None:
        """Check one member's header, before its data goes by; inspect its data if it is a file."""
        self.count_entry()
        name = member.name
        shown = _quoted(archive.member(name))
        parts = self.entry_path(archive, name)
        if member.issym():
            if parts is not None:
                self.link_target(archive, "symlink", name, parts, member.linkname)
                archive.links.add(parts)
        elif member.islnk():
            self.link_target(archive, "hardlink", name, [], member.linkname)
        elif member.ischr() or member.isblk():
            self.problem(f"{shown} is a device file")
        elif member.isfifo():
            self.problem(f"{shown} is a FIFO")
        if not is_regular(member) or read is None:
            self._not_regular(archive, parts)
            return
        self.add_unpacked(member.size, f"{shown} ({member.size} bytes)")  # refused here, before its data goes by
        if parts is None:
            return
        replay = Replay(read)
        try:
            self._member(
                archive, parts, _Content(archive.member(name), name, member.size, replay.open, replay=replay), depth
            )
        finally:
            replay.close()

    # --- members ---

    def _not_regular(self, archive: _Archive, parts: list[str] | None) -> None:
        """A member that is not a regular file: if it is the root's depot.json, that is unusable."""
        if archive.root and parts == [MANIFEST_NAME]:
            self.manifest, self.manifest_error = None, f"{MANIFEST_NAME} at the root is not a regular file"

    def _member(self, archive: _Archive, parts: list[str], content: _Content, depth: int) -> None:
        """A regular member: the root's manifest or license text taken, then inspected as a stream."""
        size = content.size or 0
        if archive.root and parts == [MANIFEST_NAME]:
            # A later copy overrides an earlier one, as it would when extracted.
            if size > MAX_MANIFEST_BYTES:
                self.manifest, self.manifest_error = None, f"{MANIFEST_NAME} is larger than 1 MiB ({size} bytes)"
            else:
                content.keep_for_another_read(keep=True)
                # One byte more than declared: reading to the end checks the size (and a zip's CRC).
                self.manifest, self.manifest_error = read_up_to(content.open(), size + 1), None
        elif (
            archive.root
            and len(parts) == 1
            and (rank := _license_rank(parts[0])) is not None
            and rank <= self.license_rank
        ):
            content.keep_for_another_read(keep=True)
            self.license_text = read_up_to(content.open(), MAX_LICENSE_BYTES).decode("utf-8", "replace")
            self.license_rank = rank
        if size:
            self.inspect(content, depth, root=False)


# --- details -------------------------------------------------------------------------------------


class _Listing:
    """Items for a detail: the first `MAX_REPORTED` kept, the rest counted."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.count = 0

    def add(self, item: str) -> None:
        self.count += 1
        if len(self.items) < MAX_REPORTED:
            self.items.append(item)

    def __str__(self) -> str:
        more = self.count - len(self.items)
        return "; ".join(self.items) + (f"; and {more} more" if more else "")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_REPORTED])
    return shown + (f" and {len(names) - MAX_REPORTED} more" if len(names) > MAX_REPORTED else "")


def _quoted(name: str) -> str:
    """A name quoted for a detail (repr escapes control characters), cut short: uploaders choose names."""
    return repr(name) if len(name) <= 120 else repr(name[:120]) + "..."


def _uncompressed_name(name: str | None) -> str | None:
    """What a compressed file's name says it holds: `model.pkl.gz` holds `model.pkl`, `data.tgz` `data.tar`."""
    if not name:
        return name
    lowered = name.lower()
    for suffix, replacement in _COMPRESSION_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)] + replacement
    return name


def _license_rank(name: str) -> int | None:
    lowered = name.lower()
    return LICENSE_NAMES.index(lowered) if lowered in LICENSE_NAMES else None


# --- paths and links -----------------------------------------------------------------------------


class _Node:
    __slots__ = ("children", "is_link")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.is_link = False


class _Links:
    """An archive's symlinks so far, as a tree of path components, for resolving paths lexically.

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
