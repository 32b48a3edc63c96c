"""`check_safetensors`: the header parses, and every tensor lies within the file, once."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping

import pytest

from tests.unit.validator_service.files import CountingFile
from validator_service.content.safetensors import check_safetensors


def build(header: Mapping[str, object] | bytes, data: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def tensor(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def check(data: bytes) -> tuple[str, str]:
    result = check_safetensors(io.BytesIO(data).read, len(data))
    assert result.id == "safetensors"
    return result.status, result.detail


GOOD_HEADER: dict[str, object] = {
    "__metadata__": {"format": "pt"},
    "a": tensor("F32", [2, 3], 0, 24),
    "b": tensor("BF16", [4], 24, 32),
    "c": tensor("BOOL", [0], 32, 32),  # an empty tensor
    "d": tensor("I64", [], 32, 40),  # a scalar
}


def test_a_good_file_passes_and_only_its_header_is_read() -> None:
    data = build(GOOD_HEADER, bytes(40))
    assert check(data) == ("pass", f"4 tensors, {len(data) - 48}-byte header, 1 metadata entry")
    counting = CountingFile(data)
    check_safetensors(counting.read, len(data))
    assert counting.bytes_read == len(data) - 40  # the 8-byte length and the header, no tensor data


def test_sub_byte_dtypes_are_sized_in_bits() -> None:
    assert check(build({"q": tensor("F4", [2, 3], 0, 3)}, bytes(3)))[0] == "pass"
    status, detail = check(build({"q": tensor("F4", [3], 0, 2)}, bytes(2)))
    assert status == "fail"
    assert detail == "tensor 'q' holds 2 bytes, its shape and dtype need 1.5"


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"\x10\x00\x00", "the file is 3 bytes long, shorter than the 8-byte header length"),
        (build(b'{"a": {"dtype": "F32", "sha'), "the header is not valid JSON"),
        (struct.pack("<Q", 1000) + b'{"a": 1}', "the header length 1000 runs past the end of the 16-byte file"),
        (struct.pack("<Q", 2**40) + b"{}", "the header length 1099511627776 is over the 104857600-byte limit"),
        (build(b"[1, 2]"), "the header is not a JSON object"),
        (build(b'{"a": 1, "a": 2}'), "duplicate key 'a'"),
        (build(b'{"x": NaN}'), "NaN is not allowed"),
        (build(b'{"\xff": 1}'), "the header is not UTF-8"),
        (build({"__metadata__": {"n": 1}}), "__metadata__ is not an object of strings"),
        (
            build({"a": tensor("F32", [2], 0, 8)}, bytes(4)),
            "tensor 'a' has data_offsets [0, 8] outside the 4-byte data area",
        ),
        (
            build({"a": tensor("F32", [2], 4, 0)}, bytes(8)),
            "tensor 'a' has data_offsets [4, 0] outside the 8-byte data area",
        ),
        (build({"a": tensor("F32", [3], 0, 8)}, bytes(8)), "tensor 'a' holds 8 bytes, its shape and dtype need 12"),
        (build({"a": tensor("Q7", [1], 0, 1)}, bytes(1)), "tensor 'a' has an unknown dtype 'Q7'"),
        (build({"a": tensor("F32", [-1], 0, 0)}), "tensor 'a' has a shape that is not a list of non-negative integers"),
        (build({"a": tensor("F32", [True], 0, 4)}, bytes(4)), "shape that is not a list of non-negative integers"),
        (build({"a": {"dtype": "F32", "shape": [1]}}, bytes(4)), "tensor 'a' has data_offsets that are not two"),
        (build({"a": [1]}), "tensor 'a' is not an object"),
        (
            build({"a": tensor("F32", [2], 0, 8), "b": tensor("F32", [2], 4, 12)}, bytes(12)),
            "tensors 'a' and 'b' overlap",
        ),
    ],
)
def test_invalid_files_fail(data: bytes, detail: str) -> None:
    status, found = check(data)
    assert status == "fail"
    assert detail in found


def test_gaps_and_trailing_bytes_warn() -> None:
    header = {"a": tensor("U8", [4], 2, 6), "b": tensor("U8", [2], 10, 12)}
    status, detail = check(build(header, bytes(15)))
    assert status == "warn"
    assert detail.endswith(
        "2 unused bytes before tensor 'a'; 4 unused bytes before tensor 'b'; 3 trailing bytes after the last tensor"
    )


def test_several_bad_tensors_are_listed() -> None:
    header = {f"t{index}": tensor("X", [1], 0, 1) for index in range(7)}
    status, detail = check(build(header, bytes(1)))
    assert status == "fail"
    assert detail.count("unknown dtype") == 5
    assert detail.endswith("; and 2 more")
