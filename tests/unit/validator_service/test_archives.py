"""`inspect_artifact` on zip and tar archives: path, link and special-file checks, limits, malformed archives,
and what the inspection hands the other checks (manifest, license text, pickle scans).

Every archive is built here, in memory, with `zipfile`, `tarfile` and `struct`.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import pickle
import stat
import struct
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from typing import Literal

import pytest

from tests.unit.validator_service.files import CountingFile, FailingFile
from validator_service.content import Rules, StorageError
from validator_service.content.archives import Findings, inspect_artifact
from validator_service.content.streams import FileAccess

MiB = 1024 * 1024
CompressionName = Literal["", "gz", "bz2", "xz"]
COMPRESSIONS: list[CompressionName] = ["", "gz", "bz2", "xz"]


class _Hostile:
    """Pickles to a call of os.system (never loaded: the scanner only reads opcodes)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo owned",))


HOSTILE_PICKLE = pickle.dumps(_Hostile(), protocol=2)
BENIGN_PICKLE = pickle.dumps(OrderedDict(weight=[1.0, 2.0]), protocol=2)
MANIFEST = json.dumps({"name": "pkg", "version": "1.0.0"}).encode()
MIT_TEXT = b"MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy..."


# --- building archives -----------------------------------------------------------------------------


def zip_bytes(*entries: tuple[str | zipfile.ZipInfo, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_special(name: str, mode: int, data: bytes = b"") -> tuple[zipfile.ZipInfo, bytes]:
    """An entry with a Unix file type and mode in its external attributes (a symlink's data is its target)."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info, data


def tar_file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def tar_entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes], compression: CompressionName = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.TarFile.open(fileobj=buffer, mode=f"w:{compression}") as archive:  # type: ignore[call-overload]
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def inspect(data: bytes | io.BytesIO, filename: str | None = None, **rules: object) -> Findings:
    f = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    return inspect_artifact(FileAccess(f, len(f.getbuffer())), filename, Rules(**rules))  # type: ignore[arg-type]


def zip_(data: bytes, **rules: object) -> Findings:
    return inspect(data, **rules)


def tar_(data: bytes, compression: CompressionName = "", **rules: object) -> Findings:
    return inspect(data, **rules)


def compress(data: bytes, compression: CompressionName) -> bytes:
    """A plain tar compressed after the fact (so tests can tamper with the tar bytes first)."""
    if compression == "gz":
        return gzip.compress(data)
    if compression == "bz2":
        return bz2.compress(data)
    return lzma.compress(data) if compression == "xz" else data


# --- benign archives -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_benign_zip_passes_and_gives_the_manifest_license_and_pickles(method: int) -> None:
    data = zip_bytes(
        ("depot.json", MANIFEST),
        ("LICENSE", MIT_TEXT),
        ("src/", b""),
        ("src/model.pkl", BENIGN_PICKLE),
        ("src/readme.txt", b"hello " * 1000),
        compression=method,
    )
    findings = zip_(data)
    assert findings.archive.status == "pass", findings.archive.detail
    assert findings.archive.detail.startswith("5 entries")
    assert findings.manifest == MANIFEST
    assert findings.manifest_error is None
    assert findings.license_text is not None
    assert findings.license_text.startswith("MIT License")
    assert [name for name, _ in findings.pickles] == ["src/model.pkl"]
    assert findings.pickles[0][1].unsafe == ()
    assert findings.complete


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_benign_tar_passes_with_every_compression(compression: CompressionName) -> None:
    data = tar_bytes(
        tar_file("./depot.json", MANIFEST),  # `./` is still the root
        tar_file("COPYING", b"some text"),
        tar_entry("weights", tarfile.DIRTYPE),
        tar_file("weights/model.pkl", BENIGN_PICKLE),
        tar_file("weights/blob", os.urandom(3000)),
        tar_entry("latest", tarfile.SYMTYPE, "weights/model.pkl"),
        tar_entry("weights/again.pkl", tarfile.LNKTYPE, "weights/model.pkl"),
        compression=compression,
    )
    findings = tar_(data, compression)
    assert findings.archive.status == "pass", findings.archive.detail
    assert findings.archive.detail.startswith("7 entries")
    assert findings.manifest == MANIFEST
    assert findings.license_text == "some text"
    assert [name for name, _ in findings.pickles] == ["weights/model.pkl"]
    assert findings.pickles[0][1].error is None


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_an_empty_tar_is_fine(compression: CompressionName) -> None:
    findings = tar_(tar_bytes(compression=compression), compression)
    # An empty tar is only zeros: nothing to open, and nothing that could harm.
    assert findings.archive.status == ("pass" if compression else "skip")
    assert findings.archive.detail.startswith("0 entries" if compression else "not an archive")
    assert findings.manifest is None
    assert findings.pickles == []


def test_an_empty_zip_is_fine() -> None:
    findings = zip_(zip_bytes())
    assert findings.archive.status == "pass"
    assert findings.archive.detail.startswith("0 entries")


def test_the_preferred_license_file_wins_and_only_at_the_root() -> None:
    data = zip_bytes(("COPYING", b"copying text"), ("sub/LICENSE", b"nested"), ("License.md", b"license md"))
    assert zip_(data).license_text == "license md"  # LICENSE.md is preferred to COPYING, any case


def test_a_manifest_over_1_mib_is_not_read() -> None:
    data = tar_bytes(tar_file("depot.json", b" " * (MiB + 1)))
    findings = tar_(data)
    assert findings.manifest is None
    assert findings.manifest_error == f"depot.json is larger than 1 MiB ({MiB + 1} bytes)"


def test_a_manifest_that_is_not_a_regular_file_is_unusable() -> None:
    findings = tar_(tar_bytes(tar_entry("depot.json", tarfile.SYMTYPE, "other.json")))
    assert findings.manifest is None
    assert findings.manifest_error == "depot.json at the root is not a regular file"


def test_zip64_end_records_are_followed() -> None:
    data = zip_bytes(("depot.json", MANIFEST), ("b.txt", b"b"))
    end = data.rindex(b"PK\x05\x06")
    _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", data, end)
    zip64_record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, end, 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    rebuilt = data[:end] + zip64_record + locator + eocd
    assert zipfile.ZipFile(io.BytesIO(rebuilt)).namelist() == ["depot.json", "b.txt"]  # a valid zip64 archive
    findings = zip_(rebuilt)
    assert findings.archive.status == "pass", findings.archive.detail
    assert findings.manifest == MANIFEST


def test_data_prepended_to_a_zip_is_allowed_for() -> None:
    data = b"#!/bin/sh\nexit 0\n" + zip_bytes(("depot.json", MANIFEST))  # a self-extractor's stub
    findings = zip_(data)
    assert findings.archive.status == "pass", findings.archive.detail
    assert findings.manifest == MANIFEST


# --- paths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil", "'../evil' escapes the root"),
        ("a/../../evil", "'a/../../evil' escapes the root"),
        ("/etc/passwd", "'/etc/passwd' is an absolute path"),
        ("C:\\x", "'C:\\\\x' is an absolute path"),
        ("c:x", "'c:x' is an absolute path"),
        ("\\windows\\x", "'\\\\windows\\\\x' is an absolute path"),
        ("a\\..\\..\\evil", "'a\\\\..\\\\..\\\\evil' escapes the root"),
        ("new\nline", "'new\\nline' has a control character in its name"),
    ],
)
def test_unsafe_zip_paths_fail(name: str, problem: str) -> None:
    findings = zip_(zip_bytes(("fine.txt", b"ok"), (name, b"x")))
    assert findings.archive.status == "fail"
    assert findings.archive.detail == f"1 problem: {problem}"


def test_a_nul_in_a_zip_name_fails() -> None:
    # zipfile cuts names at a NUL when it reads and writes them; other tools need not.
    data = zip_bytes(("evil.txt?.png", b"x")).replace(b"evil.txt?.png", b"evil.txt\x00.png")
    findings = zip_(data)
    assert findings.archive.status == "fail"
    assert findings.archive.detail == "1 problem: 'evil.txt\\x00.png' has a control character in its name"


@pytest.mark.parametrize("compression", ["", "gz"])
@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil", "'../evil' escapes the root"),
        ("/etc/passwd", "'/etc/passwd' is an absolute path"),
        ("C:\\x", "'C:\\\\x' is an absolute path"),
        ("..\\evil", "'..\\\\evil' escapes the root"),
        ("tab\there", "'tab\\there' has a control character in its name"),
    ],
)
def test_unsafe_tar_paths_fail(name: str, problem: str, compression: CompressionName) -> None:
    findings = tar_(tar_bytes(tar_file("fine.txt", b"ok"), tar_file(name, b"x"), compression=compression), compression)
    assert findings.archive.status == "fail"
    assert findings.archive.detail == f"1 problem: {problem}"


def test_paths_inside_the_root_pass_even_with_dot_dot() -> None:
    findings = zip_(zip_bytes(("a/b/../c.txt", b"x"), ("./d.txt", b"y")))
    assert findings.archive.status == "pass", findings.archive.detail


def test_problems_are_counted_and_the_list_is_capped() -> None:
    findings = zip_(zip_bytes(*((f"../evil{index}", b"x") for index in range(8))))
    assert findings.archive.status == "fail"
    assert findings.archive.detail.startswith("8 problems: '../evil0' escapes the root; ")
    assert findings.archive.detail.endswith("'../evil4' escapes the root; and 3 more")


def test_the_unicode_path_extra_field_is_checked_too() -> None:
    # Info-ZIP's unzip extracts under this field's name when its CRC matches the entry's name.
    info = zipfile.ZipInfo("innocent.txt")
    name_crc = zlib.crc32(b"innocent.txt")
    field = b"\x01" + name_crc.to_bytes(4, "little") + b"../evil.txt"
    info.extra = struct.pack("<HH", 0x7075, len(field)) + field
    findings = zip_(zip_bytes((info, b"x")))
    assert findings.archive.status == "fail"
    assert findings.archive.detail == "1 problem: '../evil.txt' escapes the root"


# --- links and special files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "target", "problem"),
    [
        ("etc", "/etc", "symlink 'etc' points to the absolute path '/etc'"),
        ("a/up", "../../x", "symlink 'a/up' -> '../../x' escapes the root"),
        ("up", "..", "symlink 'up' -> '..' escapes the root"),
        ("w", "C:\\Windows", "symlink 'w' points to the absolute path 'C:\\\\Windows'"),
    ],
)
def test_zip_symlinks_pointing_outside_fail(link: str, target: str, problem: str) -> None:
    findings = zip_(zip_bytes(zip_special(link, stat.S_IFLNK | 0o777, target.encode())))
    assert findings.archive.status == "fail"
    assert findings.archive.detail == f"1 problem: {problem}"


def test_a_zip_symlink_inside_the_root_passes() -> None:
    findings = zip_(
        zip_bytes(("data/real.txt", b"x"), zip_special("a/link", stat.S_IFLNK | 0o777, b"../data/real.txt"))
    )
    assert findings.archive.status == "pass", findings.archive.detail


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (tar_entry("etc", tarfile.SYMTYPE, "/etc"), "symlink 'etc' points to the absolute path '/etc'"),
        (tar_entry("a/b/up", tarfile.SYMTYPE, "../../../x"), "symlink 'a/b/up' -> '../../../x' escapes the root"),
        (
            tar_entry("passwd", tarfile.LNKTYPE, "/etc/passwd"),
            "hardlink 'passwd' points to the absolute path '/etc/passwd'",
        ),
        # A hardlink's target is relative to the root, not to the link's directory.
        (tar_entry("a/b/c", tarfile.LNKTYPE, "../x"), "hardlink 'a/b/c' -> '../x' escapes the root"),
        (tar_entry("dev/null", tarfile.CHRTYPE), "'dev/null' is a device file"),
        (tar_entry("dev/sda", tarfile.BLKTYPE), "'dev/sda' is a device file"),
        (tar_entry("pipe", tarfile.FIFOTYPE), "'pipe' is a FIFO"),
    ],
)
def test_tar_links_outside_and_special_files_fail(member: tuple[tarfile.TarInfo, bytes], problem: str) -> None:
    findings = tar_(tar_bytes(tar_file("ok.txt", b"ok"), member))
    assert findings.archive.status == "fail"
    assert findings.archive.detail == f"1 problem: {problem}"


def test_a_tar_symlink_inside_the_root_passes() -> None:
    findings = tar_(tar_bytes(tar_file("a/real", b"x"), tar_entry("a/b/link", tarfile.SYMTYPE, "../real")))
    assert findings.archive.status == "pass", findings.archive.detail


def test_going_through_a_symlink_then_up_fails() -> None:
    # 'sub/up' points to the root, harmless alone; but 'sub/up/../x' really is outside the root,
    # while a lexical resolution would call it 'sub/x'.
    findings = tar_(
        tar_bytes(tar_entry("sub/up", tarfile.SYMTYPE, ".."), tar_file("sub/up/../x", b"x")),
    )
    assert findings.archive.status == "fail"
    assert findings.archive.detail == "1 problem: 'sub/up/../x' goes through the symlink 'sub/up' and then '..'"


def test_a_link_target_through_a_symlink_then_up_fails() -> None:
    findings = tar_(
        tar_bytes(tar_entry("sub/up", tarfile.SYMTYPE, ".."), tar_entry("escape", tarfile.SYMTYPE, "sub/up/.."))
    )
    assert findings.archive.status == "fail"
    assert "goes through the symlink 'sub/up'" in findings.archive.detail


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        (stat.S_IFCHR | 0o666, "'dev/null' is a device file"),
        (stat.S_IFBLK | 0o660, "'dev/null' is a device file"),
        (stat.S_IFIFO | 0o644, "'dev/null' is a FIFO"),
        (stat.S_IFSOCK | 0o644, "'dev/null' is a socket"),
    ],
)
def test_zip_special_files_fail(mode: int, problem: str) -> None:
    findings = zip_(zip_bytes(zip_special("dev/null", mode)))
    assert findings.archive.status == "fail"
    assert findings.archive.detail == f"1 problem: {problem}"


# --- limits ----------------------------------------------------------------------------------------


def test_a_zip_bomb_by_ratio_fails() -> None:
    data = zip_bytes(("zeros", bytes(5 * MiB)))
    assert len(data) < 10_000
    findings = zip_(data, max_compression_ratio=10)
    assert findings.archive.status == "fail"
    assert "over max_compression_ratio (10)" in findings.archive.detail
    assert not findings.complete


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_tar_bomb_by_ratio_is_stopped_while_streaming(compression: CompressionName) -> None:
    data = tar_bytes(tar_file("zeros", bytes(5 * MiB)), tar_file("depot.json", MANIFEST), compression=compression)
    findings = tar_(data, compression, max_compression_ratio=10)
    assert findings.archive.status == "fail"
    assert "over max_compression_ratio (10)" in findings.archive.detail
    assert findings.manifest is None  # never reached: the stream was stopped inside the bomb
    assert not findings.complete


def test_a_small_compressed_tar_is_not_refused_for_its_ratio() -> None:
    # 10 KiB of tar padding compress to a few dozen bytes: a ratio far over 100, and no bomb.
    data = tar_bytes(tar_file("a.txt", b"a"), compression="gz")
    assert len(data) * 100 < 10240
    assert tar_(data, "gz").archive.status == "pass"


def test_many_small_files_in_a_tar_gz_are_not_a_bomb() -> None:
    # Headers and padding, 1 KiB of mostly zeros per entry, are the tar format's, not unpacked data.
    data = tar_bytes(*(tar_file(f"labels/{index}.txt", b"1") for index in range(3000)), compression="gz")
    assert len(gzip.decompress(data)) > 100 * len(data) > 0  # the stream alone would exceed the ratio
    findings = tar_(data, "gz")
    assert findings.archive.status == "pass", findings.archive.detail
    assert findings.archive.detail.startswith("3000 entries, 3000 bytes unpacked")


def test_too_many_zip_entries_fail() -> None:
    findings = zip_(zip_bytes(*((f"f{index}", b"x") for index in range(20))), max_entries=10)
    assert findings.archive.status == "fail"
    assert findings.archive.detail == "1 problem: the archive declares 20 entries, over max_entries (10)"


def test_too_many_tar_entries_fail() -> None:
    findings = tar_(tar_bytes(*(tar_file(f"f{index}", b"x") for index in range(20))), max_entries=10)
    assert findings.archive.status == "fail"
    assert findings.archive.detail == "1 problem: more than 10 entries (max_entries)"


def test_a_zip_whose_end_record_claims_too_many_entries_fails_before_parsing() -> None:
    data = bytearray(zip_bytes(("a", b"x")))
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 60000, 60000)  # entry counts: this disk, total
    start = struct.unpack_from("<I", data, end + 16)[0]
    data[start : start + 4] = b"JUNK"  # a parser reaching the central directory would call it malformed
    findings = zip_(bytes(data), max_entries=1000)
    assert findings.archive.status == "fail"
    assert findings.archive.detail == "1 problem: the archive declares 60000 entries, over max_entries (1000)"


def test_a_zip_with_more_entries_than_its_end_record_declares_fails() -> None:
    data = bytearray(zip_bytes(*((f"f{index}", b"x") for index in range(5))))
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 2, 2)
    findings = zip_(bytes(data), max_entries=3)
    assert findings.archive.status == "fail"
    assert findings.archive.detail == (
        "1 problem: not a valid zip archive: the central directory holds 3 entries or more, the end record says 2"
    )


def test_a_zip_over_max_unpacked_bytes_fails() -> None:
    findings = zip_(zip_bytes(("a", os.urandom(3000)), ("b", os.urandom(3000))), max_unpacked_bytes=5000)
    assert findings.archive.status == "fail"
    assert findings.archive.detail == (
        "1 problem: the entries of 'the archive': the unpacked size comes to 6000 bytes, over max_unpacked_bytes (5000)"
    )


def test_a_tar_member_over_max_unpacked_bytes_fails_before_its_data_is_read() -> None:
    data = tar_bytes(tar_file("big", os.urandom(3 * MiB)), compression="gz")
    counting = CountingFile(data)
    findings = inspect(counting, max_unpacked_bytes=MiB)
    assert findings.archive.status == "fail"
    assert findings.archive.detail == (
        f"1 problem: 'big' ({3 * MiB} bytes): the unpacked size comes to {3 * MiB} bytes, "
        f"over max_unpacked_bytes ({MiB})"
    )
    assert counting.bytes_read < 256 * 1024  # of about 3 MiB


def test_a_tar_header_declaring_a_terabyte_fails_at_once() -> None:
    header = tarfile.TarInfo("huge")
    header.size = 2**40
    data = header.tobuf(tarfile.GNU_FORMAT)  # no data follows: it is never looked for
    findings = tar_(data, max_unpacked_bytes=10 * MiB)
    assert findings.archive.status == "fail"
    assert "'huge' (1099511627776 bytes): the unpacked size comes to" in findings.archive.detail


# --- nested archives and pickles -------------------------------------------------------------------


def test_nested_archives_are_opened_whatever_their_names() -> None:
    inner_zip = zip_bytes(("x", b"x"))
    inner_tgz = tar_bytes(tar_file("y", b"y"), compression="gz")
    findings = zip_(zip_bytes(("inner.zip", inner_zip), ("data.tgz", inner_tgz), ("blob", inner_zip)))
    assert findings.archive.status == "pass", findings.archive.detail
    assert findings.archive.detail.endswith(
        "opened: 'the artifact', 'inner.zip', 'data.tgz' (gzip), 'data.tgz', 'blob'"
    )
    assert findings.archive.detail.startswith("6 entries")  # 3, then 1 in each


def test_a_nested_archive_in_a_tar_is_opened() -> None:
    findings = tar_(tar_bytes(tar_file("inner.tar.gz", tar_bytes(tar_file("../up", b"x"), compression="gz"))))
    assert findings.archive.status == "fail"
    assert findings.archive.detail == "1 problem: 'inner.tar.gz!/../up' escapes the root"


def test_a_failure_outranks_nested_archive_warnings() -> None:
    findings = zip_(zip_bytes(("inner.zip", zip_bytes()), ("../evil", b"x")))
    assert findings.archive.status == "fail"
    assert findings.archive.detail == "1 problem: '../evil' escapes the root"


def test_a_pytorch_zip_checkpoint_gives_its_data_pkl_to_the_scanner() -> None:
    benign = zip_bytes(
        ("archive/data.pkl", BENIGN_PICKLE),
        ("archive/data/0", os.urandom(64)),
        ("archive/version", b"3\n"),
        compression=zipfile.ZIP_STORED,
    )
    findings = zip_(benign)
    assert findings.archive.status == "pass"
    assert [name for name, _ in findings.pickles] == ["archive/data.pkl"]
    assert findings.pickles[0][1].unsafe == ()

    hostile = zip_bytes(("archive/data.pkl", HOSTILE_PICKLE), ("archive/version", b"3\n"))
    (name, scan), *_ = zip_(hostile).pickles
    assert name == "archive/data.pkl"
    assert "posix.system" in scan.unsafe or "os.system" in scan.unsafe


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_hostile_pickle_in_a_tar_is_scanned(compression: CompressionName) -> None:
    data = tar_bytes(
        tar_file("model.pkl", HOSTILE_PICKLE), tar_file("b.joblib", BENIGN_PICKLE), compression=compression
    )
    findings = tar_(data, compression)
    assert findings.archive.status == "pass"  # the archive is fine; the pickle check judges the pickles
    scans = dict(findings.pickles)
    assert set(scans) == {"model.pkl", "b.joblib"}
    assert scans["model.pkl"].unsafe
    assert scans["b.joblib"].unsafe == ()


def test_a_pytorch_checkpoint_inside_a_tar_is_opened_and_its_pickle_scanned() -> None:
    findings = tar_(tar_bytes(tar_file("model.pt", zip_bytes(("archive/data.pkl", HOSTILE_PICKLE)))))
    assert findings.archive.status == "pass"
    ((name, scan),) = findings.pickles
    assert name == "model.pt!/archive/data.pkl"
    assert scan.unsafe


@pytest.mark.parametrize(("policy", "status"), [("reject", "fail"), ("warn", "warn"), ("allow", "warn")])
def test_an_encrypted_zip_entry_cannot_be_inspected(policy: str, status: str) -> None:
    data = bytearray(zip_bytes(("secret.bin", b"x" * 100), ("notes", b"y")))
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 8, 0x1)  # the encrypted flag of the first entry
    findings = zip_(bytes(data), pickle_policy=policy)
    assert findings.archive.status == status
    assert findings.archive.detail == "not inspected: 'secret.bin' (encrypted)"


# --- malformed archives ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"PK\x03\x04 not really a zip, only its first bytes", "not a valid zip archive: no end of central directory"),
    ],
)
def test_not_a_zip_fails(data: bytes, detail: str) -> None:
    findings = zip_(data)
    assert findings.archive.status == "fail"
    assert detail in findings.archive.detail


def test_zip_entries_that_overlap_fail() -> None:
    # Two directory records for one local entry: the layout of non-recursive zip bombs.
    data = bytearray(zip_bytes(("a", b"x" * 100)))
    end = data.rindex(b"PK\x05\x06")
    start = struct.unpack_from("<I", data, end + 16)[0]
    record = bytes(data[start:end])
    rebuilt = data[:start] + record + record + data[end:]
    struct.pack_into("<HHI", rebuilt, len(rebuilt) - 22 + 8, 2, 2, 2 * len(record))
    findings = zip_(bytes(rebuilt))
    assert findings.archive.status == "fail"
    assert "entries 'a' and 'a' overlap" in findings.archive.detail


def test_a_zip_member_larger_than_declared_fails() -> None:
    data = bytearray(zip_bytes(("depot.json", MANIFEST)))
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)  # the declared uncompressed size
    findings = zip_(bytes(data))
    assert findings.archive.status == "fail"
    assert "'depot.json' cannot be read: it decompresses to more than its declared 10 bytes" in findings.archive.detail
    assert findings.manifest is None
    assert findings.manifest_error is not None


def test_a_zip_member_with_a_bad_crc_fails() -> None:
    data = bytearray(zip_bytes(("LICENSE", b"some license"), compression=zipfile.ZIP_STORED))
    data[data.index(b"some license")] = ord("S")
    findings = zip_(bytes(data))
    assert findings.archive.status == "fail"
    assert "'LICENSE' cannot be read: its CRC-32 does not match" in findings.archive.detail


def test_a_local_header_that_names_another_file_fails() -> None:
    data = bytearray(zip_bytes(("depot.json", MANIFEST)))
    data[30:40] = b"other.json"  # the name in the local header
    findings = zip_(bytes(data))
    assert findings.archive.status == "fail"
    assert "'depot.json' cannot be read: its local header names another file" in findings.archive.detail


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_a_truncated_tar_fails(compression: CompressionName) -> None:
    data = tar_bytes(tar_file("a", os.urandom(5000)), tar_file("b", b"b"), compression=compression)
    findings = tar_(data[: len(data) // 2], compression)
    assert findings.archive.status == "fail"
    assert ("malformed archive" if not compression else "data is truncated") in findings.archive.detail
    assert not findings.complete


def test_corrupt_gzip_data_fails() -> None:
    data = bytearray(tar_bytes(tar_file("a", os.urandom(5000)), compression="gz"))
    data[len(data) // 2] ^= 0xFF
    findings = tar_(bytes(data), "gz")
    assert findings.archive.status == "fail"
    assert "invalid gzip data" in findings.archive.detail


def test_a_bad_header_after_the_first_member_fails() -> None:
    # tarfile alone would take it for the end of the archive and hide the rest.
    data = bytearray(tar_bytes(tar_file("a", b"a"), tar_file("b", b"b")))
    data[1024 + 148 : 1024 + 156] = b"9999999\x00"  # the second header's checksum
    findings = tar_(bytes(data))
    assert findings.archive.status == "fail"
    assert "malformed archive: bad header" in findings.archive.detail


def test_data_after_the_end_of_archive_marker_fails() -> None:
    plain = tar_bytes(tar_file("a", b"a"))
    hidden = tar_bytes(tar_file("../evil", b"x"))
    data = plain + hidden  # `tar --ignore-zeros` would extract the second archive too
    findings = tar_(compress(data, "gz"), "gz")
    assert findings.archive.status == "fail"
    assert "data follows the end-of-archive marker" in findings.archive.detail


def test_an_oversized_extended_header_fails() -> None:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 2 * MiB
    data = tar_bytes(tar_file("a", b"a"))[:1024] + header.tobuf(tarfile.USTAR_FORMAT) + bytes(2 * MiB)
    findings = tar_(data)
    assert findings.archive.status == "fail"
    assert "extended header of 2097152 bytes" in findings.archive.detail


def test_a_file_named_like_an_archive_is_judged_by_its_content() -> None:
    findings = inspect(b"just some text, certainly no tar header " * 20, "a.tar")
    assert findings.archive.status == "skip"
    assert findings.archive.detail == "not an archive"


def test_a_compressed_file_that_is_not_a_tar_is_decompressed_and_counted() -> None:
    data = compress(b"plain text, compressed" * 50, "gz")
    findings = tar_(data, "gz")
    assert findings.archive.status == "pass"
    assert findings.archive.detail == f"0 entries, 1100 bytes unpacked from {len(data)}; opened: 'the artifact' (gzip)"


# --- storage failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("after", [0, 100, 600])
def test_a_storage_error_propagates_from_zip_inspection(after: int) -> None:
    data = zip_bytes(("model.pkl", BENIGN_PICKLE * 100), ("depot.json", MANIFEST))
    with pytest.raises(StorageError):
        inspect(FailingFile(data, after))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_storage_error_propagates_from_tar_inspection(compression: CompressionName) -> None:
    data = tar_bytes(tar_file("model.pkl", BENIGN_PICKLE * 1000), compression=compression)
    with pytest.raises(StorageError):
        inspect(FailingFile(data, len(data) // 2))
