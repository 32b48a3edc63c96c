"""The `safetensors` check: the header of a safetensors file parses and describes tensors within the file.

Format: 8 bytes, little-endian, give the header length N; N bytes of UTF-8 JSON follow (an object:
optional `__metadata__`, a string-to-string map, then one entry per tensor with its `dtype`,
`shape` and `data_offsets` [begin, end) relative to the data area, which starts at 8 + N and runs to
the end of the file). Only the header is read, never the tensor data (unless the file's length is
not known, inside a compressed stream: then the rest is read through to count it).
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from validator_service.content import CheckResult, unique_keys
from validator_service.content.sniff import SAFETENSORS_MAX_HEADER
from validator_service.content.streams import Read, read_up_to, skip_all

CHECK_ID: Final = "safetensors"
MAX_REPORTED: Final = 5

# Bits per element of each dtype the reference implementation knows. The sub-byte float formats
# (F4, F6_*) pack elements, so sizes are computed in bits and must come out in whole bytes.
DTYPE_BITS: Final[dict[str, int]] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}


class _Invalid(Exception):
    """The header is not valid; the message says why."""


def check_safetensors(read: Read, size: int | None) -> CheckResult:
    """Check the header of a safetensors file that `read` gives from its first byte.

    Only the header is read when `size` (the file's length) is known; when it is not (a file
    inside a compressed stream), the rest is read through to count it.
    """
    try:
        raw = _header_bytes(read, size)
        if size is None:
            size = 8 + len(raw) + skip_all(read)
        header = _parse(raw)
        data_size = size - 8 - len(raw)
        tensors, metadata_keys = _tensors(header, data_size)
        gaps = _layout(tensors, data_size)
    except _Invalid as invalid:
        return CheckResult(CHECK_ID, "fail", str(invalid))
    summary = f"{len(tensors)} tensors, {len(raw)}-byte header" + (
        f", {metadata_keys} metadata {'entry' if metadata_keys == 1 else 'entries'}" if metadata_keys else ""
    )
    if gaps:
        return CheckResult(CHECK_ID, "warn", f"{summary}; {_listed(gaps)}")
    return CheckResult(CHECK_ID, "pass", summary)


def _header_bytes(read: Read, size: int | None) -> bytes:
    """The JSON header's bytes, after checking that its length is plausible and within the file."""
    if size is not None and size < 8:
        raise _Invalid(f"the file is {size} bytes long, shorter than the 8-byte header length")
    prefix = read_up_to(read, 8)
    if len(prefix) < 8:
        raise _Invalid("the file ended before the 8-byte header length")
    length = int.from_bytes(prefix, "little")
    if length > SAFETENSORS_MAX_HEADER:
        raise _Invalid(f"the header length {length} is over the {SAFETENSORS_MAX_HEADER}-byte limit")
    if size is not None and 8 + length > size:
        raise _Invalid(f"the header length {length} runs past the end of the {size}-byte file")
    # The header has to be parsed whole, so it is held in memory: the limit above bounds it.
    raw = read_up_to(read, length)
    if len(raw) < length:
        raise _Invalid(f"the file ended inside the {length}-byte header")
    return raw


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Invalid(f"the header is not UTF-8 ({error.reason} at byte {error.start})") from None
    try:
        # Duplicate keys would let two readers see two different tensors under one name; NaN and
        # Infinity are not JSON.
        value = json.loads(text, object_pairs_hook=unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise _Invalid(
            f"the header is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    except ValueError as error:  # raised by the hooks above
        raise _Invalid(f"the header is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise _Invalid("the header is not a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _tensors(header: dict[str, Any], data_size: int) -> tuple[list[tuple[int, int, str]], int]:
    """The tensors' (begin, end, name), each validated, and the number of metadata entries."""
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise _Invalid("__metadata__ is not an object of strings")
    problems: list[str] = []
    tensors: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            tensors.append(_tensor(name, info, data_size))
        except _Invalid as invalid:
            problems.append(str(invalid))
    if problems:
        raise _Invalid(_listed(problems))
    return tensors, len(metadata)


def _tensor(name: str, info: Any, data_size: int) -> tuple[int, int, str]:
    label = repr(name) if len(name) <= 100 else repr(name[:100]) + "..."
    if not isinstance(info, dict):
        raise _Invalid(f"tensor {label} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _Invalid(f"tensor {label} has an unknown dtype {dtype!r}"[:200])
    if not isinstance(shape, list) or not all(_is_natural(dim) for dim in shape):
        raise _Invalid(f"tensor {label} has a shape that is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_natural(offset) for offset in offsets):
        raise _Invalid(f"tensor {label} has data_offsets that are not two non-negative integers")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise _Invalid(f"tensor {label} has data_offsets [{begin}, {end}] outside the {data_size}-byte data area")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or end - begin != bits // 8:
        expected = f"{bits // 8}" if bits % 8 == 0 else f"{bits / 8:g}"
        raise _Invalid(f"tensor {label} holds {end - begin} bytes, its shape and dtype need {expected}")
    return begin, end, label


def _is_natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _layout(tensors: list[tuple[int, int, str]], data_size: int) -> list[str]:
    """Fail on overlapping tensors; list the bytes of the data area that no tensor covers."""
    gaps: list[str] = []
    overlaps: list[str] = []
    position = 0
    previous = ""
    for begin, end, label in sorted(tensors):
        if begin < position:
            overlaps.append(f"tensors {previous} and {label} overlap")
        elif begin > position:
            gaps.append(f"{begin - position} unused bytes before tensor {label}")
        if end >= position:
            position, previous = end, label
    if overlaps:
        raise _Invalid(_listed(overlaps))
    if position < data_size:
        gaps.append(f"{data_size - position} trailing bytes after the last tensor")
    return gaps


def _listed(items: list[str]) -> str:
    shown = "; ".join(items[:MAX_REPORTED])
    return shown + (f"; and {len(items) - MAX_REPORTED} more" if len(items) > MAX_REPORTED else "")
