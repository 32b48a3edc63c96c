"""`sniff`: what a file is, from its first bytes first and its name second."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import pickle
import struct
import tarfile
import zipfile

import pytest
from backports import zstd

from validator_service.content.sniff import HEAD_SIZE, magic_kind, sniff


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", b"a")
    return buffer.getvalue()


def _empty_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w"):
        pass
    return buffer.getvalue()


def _tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"a"))
    return buffer.getvalue()


def _gnu_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(tarfile.TarInfo("empty"), io.BytesIO())
    return buffer.getvalue()


def _old_tar() -> bytes:
    """A pre-POSIX (v7) tar: no `ustar` mark, known by its header's checksum."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"a"))
    data = bytearray(buffer.getvalue())
    data[257:265] = bytes(8)  # no magic, no version
    checksum = sum(data[:148]) + 8 * 32 + sum(data[156:512])
    data[148:156] = b"%06o\x00 " % checksum
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as archive:
        assert archive.getnames() == ["a.txt"]
    return bytes(data)


def _safetensors(header: dict[str, object]) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (_zip(), "zip"),
        (_empty_zip(), "zip"),
        (gzip.compress(b"x", mtime=0), "gzip"),  # a fixed time: the same test id in every worker
        (bz2.compress(b"x"), "bzip2"),
        (lzma.compress(b"x"), "xz"),
        (_tar(), "tar"),
        (_gnu_tar(), "tar"),
        (_old_tar(), "tar"),
        (zstd.compress(b"x"), "zstd"),
        (b"7z\xbc\xaf\x27\x1c\x00\x04", "7z"),
        (b"Rar!\x1a\x07\x01\x00", "rar"),
        (b"Rar!\x1a\x07\x00", "rar"),
        (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'", "npy"),
        (pickle.dumps([1], protocol=2), None),  # pickles are scanned, never sniffed
        (pickle.dumps([1], protocol=5), None),
        (bytes(10240), None),  # an empty tar: zeros, nothing to open
        (_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}) + bytes(4), "safetensors"),
        (_safetensors({}), "safetensors"),
        (b"hello world", None),
        (b"", None),
        (b"BZh is how this text starts", None),
    ],
)
def test_magic_bytes(data: bytes, kind: str | None) -> None:
    assert magic_kind(data[:HEAD_SIZE]) == kind


def test_safetensors_is_not_taken_for_a_pickle_or_gzip() -> None:
    # Header lengths of 640 and 35615 bytes begin with pickle's and gzip's magic bytes.
    for length in (0x0280, 0x8B1F):
        head = struct.pack("<Q", length) + b'{"__metadata__":{}}'
        assert head[:2] in (b"\x80\x02", b"\x1f\x8b")
        assert magic_kind(head) == "safetensors"


def test_an_implausible_safetensors_length_is_not_safetensors() -> None:
    assert magic_kind(struct.pack("<Q", 2**40) + b'{"a": 1}') is None
    assert magic_kind(struct.pack("<Q", 1) + b"{") is None


def test_the_magic_decides_never_the_name() -> None:
    assert sniff(_zip(), "model.pt") == "zip"  # a zip-format PyTorch checkpoint
    assert sniff(gzip.compress(b"x"), "model.pkl") == "gzip"
    assert sniff(b"whatever", "old.tar") == "other"
    assert sniff(b"whatever", "a.zip") == "other"
    assert sniff(b"whatever", "notes.txt") == "other"
    assert sniff(b"", None) == "other"


def test_the_legacy_lzma_format_is_known_by_its_name_only() -> None:
    data = lzma.compress(b"x", format=lzma.FORMAT_ALONE)
    assert magic_kind(data) is None
    assert sniff(data, "weights.bin.LZMA") == "xz"
    assert sniff(data, "weights.bin") == "other"
