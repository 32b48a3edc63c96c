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

from validator_service.content.sniff import HEAD_SIZE, is_pickle_name, magic_kind, name_kind, sniff


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


def _safetensors(header: dict[str, object]) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (_zip(), "zip"),
        (_empty_zip(), "zip"),
        (gzip.compress(b"x"), "gzip"),
        (bz2.compress(b"x"), "bzip2"),
        (lzma.compress(b"x"), "xz"),
        (_tar(), "tar"),
        (_gnu_tar(), "tar"),
        (pickle.dumps([1], protocol=2), "pickle"),
        (pickle.dumps([1], protocol=5), "pickle"),
        (_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}) + bytes(4), "safetensors"),
        (_safetensors({}), "safetensors"),
        (b"hello world", None),
        (b"", None),
        (pickle.dumps([1], protocol=0), None),  # protocols 0 and 1 have no magic
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


@pytest.mark.parametrize(
    ("filename", "kind"),
    [
        ("model.pkl", "pickle"),
        ("MODEL.PICKLE", "pickle"),
        ("x.joblib", "pickle"),
        ("weights.pt", "pickle"),
        ("weights.pth", "pickle"),
        ("pytorch_model.bin", "pickle"),
        ("last.ckpt", "pickle"),
        ("model.safetensors", "safetensors"),
        ("a.zip", "zip"),
        ("a.tar", "tar"),
        ("a.tgz", "gzip"),
        ("a.tar.gz", "gzip"),
        ("a.tar.bz2", "bzip2"),
        ("a.tbz2", "bzip2"),
        ("a.tar.xz", "xz"),
        ("a.txz", "xz"),
        ("dir/sub\\a.tar", "tar"),
        ("readme.md", "other"),
        ("pkl", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_names(filename: str | None, kind: str) -> None:
    assert name_kind(filename) == kind


def test_the_magic_wins_over_the_name() -> None:
    assert sniff(_zip(), "model.pt") == "zip"  # a zip-format PyTorch checkpoint
    assert sniff(gzip.compress(b"x"), "model.pkl") == "gzip"
    assert sniff(pickle.dumps(1, protocol=4), "notes.txt") == "pickle"


def test_the_name_decides_when_the_magic_says_nothing() -> None:
    assert sniff(pickle.dumps([1], protocol=0), "model.pkl") == "pickle"
    assert sniff(b"whatever", "old.tar") == "tar"
    assert sniff(b"whatever", "notes.txt") == "other"
    assert sniff(b"", None) == "other"


def test_pickle_names() -> None:
    assert is_pickle_name("archive/data.pkl")
    assert is_pickle_name("Model.PT")
    assert not is_pickle_name("data.pkl.txt")
