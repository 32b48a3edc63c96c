"""The pickle scanner and the "pickle" check, over pickles built here and never loaded.

The corpus comes from `pickle.dumps` (which only writes: the hostile callables are named, not
called) and from opcodes written by hand with the helpers below, checked well-formed with
`pickletools.dis` where they are meant to be valid.
"""

from __future__ import annotations

import builtins
import collections
import datetime
import decimal
import io
import os
import pickle
import pickletools
import struct
import subprocess
import time
import tracemalloc
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from validator_service.content import PicklePolicy, StorageError, pickles
from validator_service.content.pickles import SAFE_IMPORTS, PickleScan, pickle_check, scan_pickle

MiB = 1024 * 1024
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)

# --- writing opcodes by hand ---------------------------------------------------------------------

CODES = {info.name: info.code.encode("latin-1") for info in pickletools.opcodes}


def op(name: str, argument: bytes = b"") -> bytes:
    """One opcode, by its pickletools name, followed by its raw argument."""
    return CODES[name] + argument


def text(value: str) -> bytes:
    """A SHORT_BINUNICODE pushing `value` (protocol 4)."""
    data = value.encode()
    return op("SHORT_BINUNICODE", bytes([len(data)]) + data)


def global_(module: str, name: str) -> bytes:
    return op("GLOBAL", f"{module}\n{name}\n".encode())


def proto(number: int) -> bytes:
    return op("PROTO", bytes([number]))


def call_with_string(argument: str = "echo hi") -> bytes:
    """Call what is on the stack with one string, and stop: the shape of an exploit."""
    return text(argument) + op("TUPLE1") + op("REDUCE") + op("STOP")


def well_formed(data: bytes) -> bytes:
    """`data`, once pickletools has disassembled it without complaint (it checks the stack too)."""
    pickletools.dis(data, out=io.StringIO())
    return data


def scan(data: bytes) -> PickleScan:
    return scan_pickle(io.BytesIO(data))


class Reduces:
    """Pickles as a call of `function` with `arguments`, as an exploit's __reduce__ does."""

    def __init__(self, function: Callable[..., Any], arguments: tuple[Any, ...]) -> None:
        self.function, self.arguments = function, arguments

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.function, self.arguments


# --- benign pickles ------------------------------------------------------------------------------

BENIGN = {
    "dict": {"a": 1, "b": [1, 2], 3: None},
    "list": [1, 2.5, "x", None, True],
    "str": "hello, wörld",
    "long str": "x" * 5000,
    "int": 7,
    "big int": 2**1000,
    "float": 3.25,
    "bytes": b"\x00\x01 binary",
    "big bytes": bytes(range(256)) * 1000,
    "bytearray": bytearray(b"abc"),
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", "b"}),
    "tuple": (1, (2, 3), ()),
    "OrderedDict": collections.OrderedDict([("w", 1.0), ("b", 2.0)]),
    "datetime": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
    "date and time": [datetime.date(2024, 1, 2), datetime.time(3, 4), datetime.timedelta(days=1)],
    "Decimal": decimal.Decimal("3.14159"),
    "complex": complex(1, -2),
    "range and slice": [range(3, 9), slice(1, 5, 2)],
    "UUID": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "shared strings": ["same", "same", {"same": "same"}],
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("value", BENIGN.values(), ids=BENIGN.keys())
def test_benign_values_are_safe_under_every_protocol(value: object, protocol: int) -> None:
    result = scan(pickle.dumps(value, protocol=protocol))
    assert result.error is None
    assert result.unsafe == ()
    assert set(result.imports) <= SAFE_IMPORTS


def test_python2_names_are_judged_by_what_python3_imports() -> None:
    # Protocols 0-2 write builtins as __builtin__ (pickle's _compat_pickle), and read them back.
    assert scan(pickle.dumps({1, 2}, protocol=2)).imports == ("builtins.set",)
    written = well_formed(proto(2) + global_("copy_reg", "_reconstructor") + op("STOP"))
    assert scan(written) == PickleScan(("copyreg._reconstructor",), (), None)
    # From protocol 3 on the unpickler maps nothing: __builtin__ does not exist in Python 3.
    unmapped = well_formed(proto(3) + global_("__builtin__", "set") + op("STOP"))
    assert scan(unmapped).unsafe == ("__builtin__.set",)
    # And mapping never makes a dangerous name safe.
    assert scan(global_("__builtin__", "eval") + op("STOP")).unsafe == ("builtins.eval",)


def test_the_allow_list_holds_nothing_that_runs_code_or_reaches_the_system() -> None:
    dangerous_modules = ("os", "posix", "nt", "subprocess", "importlib", "runpy", "pickle", "shutil", "socket")
    assert not [name for name in SAFE_IMPORTS if name.split(".")[0] in dangerous_modules]
    dangerous = {
        "builtins.eval",
        "builtins.exec",
        "builtins.getattr",
        "builtins.setattr",
        "builtins.__import__",
        "builtins.open",
        "builtins.compile",
        "builtins.type",
        "functools.partial",
        "operator.attrgetter",
        "torch.load",
        "torch.storage._load_from_bytes",
        "webbrowser.open",
    }
    assert not dangerous & SAFE_IMPORTS


# --- hostile pickles -----------------------------------------------------------------------------

HOSTILE = {
    "os.system": (Reduces(os.system, ("echo hi",)), f"{os.system.__module__}.system"),
    "eval": (Reduces(builtins.eval, ("1 + 1",)), "builtins.eval"),
    "exec": (Reduces(builtins.exec, ("pass",)), "builtins.exec"),
    "Popen": (Reduces(subprocess.Popen, (["true"],)), "subprocess.Popen"),
    "getattr": (Reduces(builtins.getattr, ([], "append")), "builtins.getattr"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("value", "expected"), HOSTILE.values(), ids=HOSTILE.keys())
def test_dangerous_imports_are_unsafe_under_every_protocol(value: object, expected: str, protocol: int) -> None:
    result = scan(pickle.dumps(value, protocol=protocol))
    assert result.error is None
    assert result.imports == (expected,)
    assert result.unsafe == (expected,)


def test_a_hostile_object_inside_benign_data_is_found() -> None:
    value = {"weights": [1.0, 2.0], "config": collections.OrderedDict(x=Reduces(builtins.exec, ("pass",)))}
    result = scan(pickle.dumps(value, protocol=4))
    assert result.imports == ("collections.OrderedDict", "builtins.exec")
    assert result.unsafe == ("builtins.exec",)


# Ways a protocol 4+ pickle can bring "os" and "system" to STACK_GLOBAL; the scanner must follow
# the memo and the stack exactly as the unpickler does.
STACK_TRICKS = {
    "BINPUT and BINGET": text("os")
    + op("BINPUT", b"\x00")
    + op("POP")
    + text("system")
    + op("BINPUT", b"\x01")
    + op("POP")
    + op("BINGET", b"\x00")
    + op("BINGET", b"\x01"),
    "MEMOIZE and text GET": text("os")
    + op("MEMOIZE")
    + op("POP")
    + text("system")
    + op("MEMOIZE")
    + op("POP")
    + op("GET", b"0\n")
    + op("LONG_BINGET", struct.pack("<I", 1)),
    # MEMOIZE stores at len(memo), which counts keys set out of sequence by BINPUT.
    "MEMOIZE after BINPUT 7": text("x")
    + op("BINPUT", b"\x07")
    + op("POP")
    + text("os")
    + op("MEMOIZE")
    + op("POP")
    + text("system")
    + op("MEMOIZE")
    + op("POP")
    + op("BINGET", b"\x01")
    + op("BINGET", b"\x02"),
    "PUT overwriting a key": text("collections")
    + op("PUT", b"3\n")
    + op("POP")
    + text("os")
    + op("PUT", b"3\n")
    + op("POP")
    + op("GET", b"3\n")
    + text("system"),
    "DUP": text("os") + op("DUP") + op("POP") + text("system"),
    "POP_MARK": text("os") + op("MARK") + text("junk") + text("more") + op("POP_MARK") + text("system"),
    "POP of an empty MARK": text("os") + op("MARK") + op("POP") + text("system"),
    "SHORT_BINSTRING": op("SHORT_BINSTRING", b"\x02os") + op("BINSTRING", struct.pack("<i", 6) + b"system"),
    "escaped STRING": op("STRING", b"'o\\x73'\n") + op("UNICODE", b"\\u0073ystem\n"),
    "BINUNICODE and BINUNICODE8": op("BINUNICODE", struct.pack("<I", 2) + b"os")
    + op("BINUNICODE8", struct.pack("<Q", 6) + b"system"),
    "FRAME": op("FRAME", struct.pack("<Q", 13)) + text("os") + text("system"),
}


@pytest.mark.parametrize(("trick", "pushes"), STACK_TRICKS.items(), ids=STACK_TRICKS.keys())
def test_stack_global_is_resolved_through_memo_and_stack(trick: str, pushes: bytes) -> None:
    data = proto(4) + pushes + op("STACK_GLOBAL") + call_with_string()
    if trick != "PUT overwriting a key":  # which the unpickler does, but pickletools.dis refuses
        well_formed(data)
    assert scan(data) == PickleScan(("os.system",), ("os.system",), None)


def test_stack_global_of_values_that_are_not_strings_breaks_as_the_loader_does() -> None:
    # The unpickler refuses STACK_GLOBAL on anything but two str: it imports nothing and fails.
    numbers = well_formed(proto(4) + op("BININT1", b"\x01") + op("BININT1", b"\x02") + op("STACK_GLOBAL") + op("STOP"))
    as_bytes = proto(4) + op("SHORT_BINBYTES", b"\x02os") + text("system") + op("STACK_GLOBAL") + op("STOP")
    for data in (numbers, as_bytes):
        result = scan(data)
        assert not result.is_pickle
        assert result.error is not None
        assert "STACK_GLOBAL requires two strings" in result.error
    with pytest.raises(pickle.UnpicklingError, match="STACK_GLOBAL requires str"):
        pickle.loads(numbers)  # noqa: S301 - numbers only: this shows where the loader stops


def test_stack_global_of_values_that_may_be_strings_is_unresolved_and_unsafe() -> None:
    # A memo entry holding a call's result may be a string: the import cannot be named.
    from_a_call = (
        proto(4) + global_("builtins", "str") + op("EMPTY_TUPLE") + op("REDUCE") + op("MEMOIZE") + op("POP")
        + op("BINGET", b"\x00") + text("system") + op("STACK_GLOBAL") + op("STOP")
    )  # fmt: skip
    assert scan(from_a_call).unsafe == ("<unresolved STACK_GLOBAL>",)
    # A memo key never set: the unpickler fails there, before any import.
    missing = proto(4) + op("BINGET", b"\x09") + text("system") + op("STACK_GLOBAL") + op("STOP")
    assert not scan(missing).is_pickle


def test_a_string_too_long_to_be_kept_is_unresolved() -> None:
    long_name = "a" * (pickles.MAX_NAME_BYTES + 1)
    data = proto(4) + op("BINUNICODE", struct.pack("<I", len(long_name)) + long_name.encode())
    result = scan(data + text("system") + op("STACK_GLOBAL") + op("STOP"))
    assert result.unsafe == ("<unresolved STACK_GLOBAL>",)
    assert result.error is None


def test_odd_escapes_neither_resolve_nor_warn() -> None:
    # The unpickler keeps an unknown escape's backslash (or fails on a too large octal one), and
    # warns: the scanner must not, where warnings are errors.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for escaped in (b"'o\\qs'", b"'\\777'", b"'os\\'"):
            data = proto(4) + op("STRING", escaped + b"\n") + text("system") + op("STACK_GLOBAL") + op("STOP")
            assert scan(data) == PickleScan((), ("<unresolved STACK_GLOBAL>",), None)


def test_a_dotted_name_is_unsafe_even_when_it_spells_an_allowed_import() -> None:
    # Protocol 4 resolves "_utils._rebuild_tensor_v2" attribute by attribute; the allow-list only
    # admits names split the way picklers write them.
    data = well_formed(proto(4) + text("torch") + text("_utils._rebuild_tensor_v2") + op("STACK_GLOBAL") + op("STOP"))
    assert scan(data).unsafe == ("torch._utils._rebuild_tensor_v2",)


@pytest.mark.parametrize(("name", "code"), [("EXT1", b"\x01"), ("EXT2", b"\x01\x02"), ("EXT4", b"\x01\x02\x03\x04")])
def test_extension_codes_break_as_in_a_loader_with_an_empty_registry(name: str, code: bytes) -> None:
    data = well_formed(proto(2) + op(name, code) + op("EMPTY_TUPLE") + op("REDUCE") + op("STOP"))
    result = scan(data)
    assert not result.is_pickle
    assert "unregistered extension code" in str(result.error)
    with pytest.raises(ValueError, match="unregistered extension code"):
        pickle.loads(data)  # noqa: S301 - an empty registry: this shows where the loader stops
    # After a real import, the break is a pickle that could not be fully scanned.
    after_import = scan(global_("os", "system") + op(name, code) + op("STOP"))
    assert after_import.is_pickle
    assert after_import.unsafe == ("os.system",)
    assert "unregistered extension code" in str(after_import.error)


def test_inst_imports_and_calls() -> None:
    data = well_formed(op("MARK") + op("STRING", b"'echo hi'\n") + op("INST", b"os\nsystem\n") + op("STOP"))
    assert scan(data) == PickleScan(("os.system",), ("os.system",), None)


def test_an_over_long_import_name_is_unsafe_and_shortened() -> None:
    module = "m" * 5000
    result = scan(global_(module, "f") + op("STOP"))
    assert result.error is None
    (name,) = result.unsafe
    assert name.endswith("...")
    assert len(name) < 1100
    assert result.imports == result.unsafe


# --- PyTorch -------------------------------------------------------------------------------------


def torch_state_dict_pickle(storage_class: str = "FloatStorage") -> bytes:
    """What torch.save writes (protocol 2) for an OrderedDict holding one 2x2 tensor."""
    storage = (
        op("MARK")
        + op("BINUNICODE", struct.pack("<I", 7) + b"storage")
        + global_("torch", storage_class)
        + op("BINUNICODE", struct.pack("<I", 1) + b"0")
        + op("BINUNICODE", struct.pack("<I", 3) + b"cpu")
        + op("BININT1", b"\x04")
        + op("TUPLE")
        + op("BINPERSID")
    )
    tensor = (
        global_("torch._utils", "_rebuild_tensor_v2")
        + op("BINPUT", b"\x02")
        + op("MARK")
        + storage
        + op("BININT1", b"\x00")
        + op("BININT1", b"\x02")
        + op("BININT1", b"\x02")
        + op("TUPLE2")
        + op("BININT1", b"\x02")
        + op("BININT1", b"\x01")
        + op("TUPLE2")
        + op("NEWFALSE")
        + global_("collections", "OrderedDict")
        + op("BINPUT", b"\x03")
        + op("EMPTY_TUPLE")
        + op("REDUCE")
        + op("TUPLE")
        + op("REDUCE")
    )
    return well_formed(
        proto(2)
        + global_("collections", "OrderedDict")
        + op("BINPUT", b"\x00")
        + op("EMPTY_TUPLE")
        + op("REDUCE")
        + op("BINPUT", b"\x01")
        + op("MARK")
        + op("BINUNICODE", struct.pack("<I", 6) + b"weight")
        + tensor
        + op("SETITEMS")
        + op("STOP")
    )


def test_a_pytorch_state_dict_is_safe() -> None:
    expected = ("collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage")
    assert scan(torch_state_dict_pickle()) == PickleScan(expected, (), None)


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def legacy_torch_file(main: bytes, second: bytes | None = None, raw: bytes | None = None) -> bytes:
    """The legacy torch.save layout: five pickles, then each storage as its size and raw bytes."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (
        pickle.dumps(LEGACY_MAGIC, protocol=2)
        + (second if second is not None else pickle.dumps(1001, protocol=2))
        + pickle.dumps(sys_info, protocol=2)
        + main
        + pickle.dumps(["0"], protocol=2)
        + (raw if raw is not None else struct.pack("<q4f", 4, 1.0, 2.0, 3.0, 4.0))
    )


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("<q4f", 4, 1.0, 2.0, 3.0, 4.0),
        struct.pack("<q", 0x280) + bytes(640 * 4),  # starts 80 02: looks like PROTO 2
        struct.pack("<q", 0x63) + bytes(99 * 4),  # starts with "c": looks like GLOBAL
        struct.pack("<q", 0x63) + b"\x00\nnot\nimportant" + bytes(20),  # ... even one with two lines
        struct.pack("<q", 0x70) + bytes(range(11, 255)) + b"\n" + bytes(8),  # "p": like PUT, with a long line
        b"",
    ],
    ids=["floats", "like PROTO", "like GLOBAL", "like GLOBAL with lines", "like PUT", "no storage"],
)
def test_legacy_torch_file_scans_every_pickle_and_ignores_raw_data(raw: bytes) -> None:
    result = scan(legacy_torch_file(torch_state_dict_pickle(), raw=raw))
    assert result == PickleScan(
        ("collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"), (), None
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_hostile_pickle_among_several_is_found(protocol: int) -> None:
    # The legacy loader unpickles each pickle in turn, whatever its protocol.
    hostile = pickle.dumps(Reduces(os.system, ("echo hi",)), protocol=protocol)
    result = scan(legacy_torch_file(torch_state_dict_pickle(), second=hostile))
    assert result.error is None
    assert result.unsafe == (f"{os.system.__module__}.system",)
    assert result.imports[0] == f"{os.system.__module__}.system"
    assert "torch._utils._rebuild_tensor_v2" in result.imports


def test_a_later_pickle_that_calls_before_breaking_is_reported() -> None:
    # A loader runs os.system before it reaches the garbage: not trailing data.
    exploit = global_("os", "system") + op("MARK") + op("STRING", b"'echo hi'\n") + op("TUPLE") + op("REDUCE")
    result = scan(pickle.dumps(1, protocol=2) + exploit + b"\x00 garbage")
    assert result.unsafe == ("os.system",)
    assert result.error is not None
    assert result.error.startswith("unknown opcode 0x00")


def test_the_first_pickle_is_always_reported() -> None:
    result = scan(global_("os", "system") + b"\x00")
    assert result.unsafe == ("os.system",)
    assert result.error is not None


# --- malformed streams and limits ----------------------------------------------------------------


def test_empty_stream() -> None:
    assert scan(b"") == PickleScan((), (), "empty", is_pickle=False)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_truncated_stream(protocol: int) -> None:
    data = pickle.dumps({"weights": b"\x00" * 100, "name": "model"}, protocol=protocol)
    for cut in (1, len(data) // 2, len(data) - 1):
        result = scan(data[:cut])
        assert result.error is not None
        assert result.error.startswith("truncated")


@pytest.mark.parametrize("data", [b"\xff", proto(2) + b"\xff", proto(4) + op("NONE") + b"\x00"], ids=repr)
def test_unknown_opcode(data: bytes) -> None:
    result = scan(data)
    assert result.error is not None
    assert result.error.startswith("unknown opcode")


@pytest.mark.parametrize(
    "data",
    [
        proto(2) + op("REDUCE"),
        proto(2) + op("NONE") + op("MARK") + op("TUPLE2"),
        proto(2) + op("TUPLE"),
        proto(4) + op("MARK") + op("MEMOIZE"),
        op("STOP"),
    ],
    ids=["REDUCE on empty", "TUPLE2 across a MARK", "TUPLE without MARK", "MEMOIZE of a MARK", "bare STOP"],
)
def test_stack_underflow(data: bytes) -> None:
    result = scan(data)
    assert result.error is not None
    assert "stack underflow" in result.error


def test_a_padded_memo_index_is_beyond_the_scanner() -> None:
    # int() would take it, whatever the padding: not malformed, but not for the scanner to follow.
    result = scan(op("NONE") + op("PUT", b" " * 100 + b"1\n") + op("STOP"))
    assert result.error == "memo index longer than 64 bytes in PUT at byte 1"


def test_other_malformed_arguments() -> None:
    assert "unsupported protocol" in str(scan(proto(9) + op("NONE") + op("STOP")).error)
    assert "negative byte count" in str(scan(op("BINSTRING", struct.pack("<i", -1))).error)
    assert "not a number" in str(scan(op("NONE") + op("PUT", b"x1\n") + op("STOP")).error)
    assert "not utf-8" in str(scan(op("GLOBAL", b"o\xffs\nsystem\n") + op("STOP")).error)


def test_stack_depth_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickles, "MAX_STACK_DEPTH", 100)
    result = scan(op("MARK") * 101 + op("STOP"))
    assert result.error == "stack deeper than 100 entries in MARK at byte 100"


def test_long_protocol_0_lines_are_read_in_bounded_memory() -> None:
    data = pickle.dumps(["x" * (3 * MiB), b"y" * MiB], protocol=0)
    assert scan(data) == PickleScan(("_codecs.encode",), (), None)
    stream = io.BytesIO(op("LONG", b"7" * (3 * MiB) + b"L\n") + op("STOP"))
    tracemalloc.start()
    try:
        result = scan_pickle(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == PickleScan((), (), None)
    assert peak < MiB


class LazyStream(io.RawIOBase):
    """`prefix`, then `size` zero bytes made up as they are read, then `suffix`; counts what is read."""

    ZEROS = memoryview(bytes(MiB))

    def __init__(self, prefix: bytes, size: int, suffix: bytes) -> None:
        super().__init__()
        self._parts = [(0, prefix), (len(prefix), None), (len(prefix) + size, suffix)]
        self._size = size
        self._total = len(prefix) + size + len(suffix)
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = self.position
        prefix, suffix = self._parts[0][1], self._parts[2][1]
        assert prefix is not None
        assert suffix is not None
        zeros_start, suffix_start = self._parts[1][0], self._parts[2][0]
        if start < zeros_start:
            count = min(len(view), zeros_start - start)
            view[:count] = prefix[start : start + count]
        elif start < suffix_start:
            count = min(len(view), suffix_start - start, len(self.ZEROS))
            view[:count] = self.ZEROS[:count]
        else:
            count = min(len(view), self._total - start)
            view[:count] = suffix[start - suffix_start : start - suffix_start + count]
        self.position += count
        return count


def test_a_huge_payload_is_skipped_in_bounded_memory() -> None:
    size = 50 * MiB
    prefix = proto(4) + op("BINBYTES", struct.pack("<I", size))
    suffix = op("STOP")
    raw = LazyStream(prefix, size, suffix)
    stream = io.BufferedReader(raw)
    tracemalloc.start()
    try:
        result = scan_pickle(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == PickleScan((), (), None)
    assert raw.position == len(prefix) + size + len(suffix)  # really read through
    assert peak < 8 * MiB


def test_a_real_50_mib_pickle_is_scanned_in_bounded_memory() -> None:
    data = pickle.dumps({"weights": bytes(50 * MiB), "extra": bytearray(MiB)}, protocol=5)
    stream = io.BytesIO(data)
    tracemalloc.start()
    try:
        result = scan_pickle(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == PickleScan((), (), None)
    assert peak < 8 * MiB


def test_a_length_claiming_a_terabyte_is_not_allocated() -> None:
    data = proto(4) + op("BINBYTES8", struct.pack("<Q", 2**40)) + b"tiny" + op("STOP")
    stream = io.BytesIO(data)
    started = time.monotonic()
    tracemalloc.start()
    try:
        result = scan_pickle(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.error == "truncated in BINBYTES8 at byte 2"
    assert peak < MiB
    assert time.monotonic() - started < 5


class FailingStream(io.RawIOBase):
    """A stream whose storage fails after `good` bytes."""

    def __init__(self, good: bytes) -> None:
        super().__init__()
        self._good = good

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._good:
            data, self._good = self._good, b""
            return data
        raise StorageError("S3 is down")


def test_a_storage_error_propagates() -> None:
    with pytest.raises(StorageError, match="S3 is down"):
        scan_pickle(FailingStream(proto(4) + op("BINBYTES8", struct.pack("<Q", 10 * MiB))))  # type: ignore[arg-type]


def test_the_scan_starts_at_the_stream_position() -> None:
    stream = io.BytesIO(b"header" + pickle.dumps(Reduces(builtins.eval, ("1",)), protocol=4))
    stream.seek(6)
    assert scan_pickle(stream).unsafe == ("builtins.eval",)


# --- the check -----------------------------------------------------------------------------------

CLEAN = PickleScan(("collections.OrderedDict", "torch._utils._rebuild_tensor_v2"), (), None)
HOSTILE_SCAN = PickleScan(("collections.OrderedDict", "os.system"), ("os.system",), None)
BROKEN = PickleScan(("collections.OrderedDict",), (), "truncated in BINBYTES at byte 12")


def test_check_without_pickles_is_skipped() -> None:
    policies: tuple[PicklePolicy, ...] = ("reject", "warn", "allow")
    for policy in policies:
        result = pickle_check([], policy)
        assert (result.id, result.status, result.detail) == ("pickle", "skip", "no pickle found")


@pytest.mark.parametrize("policy", ["reject", "warn", "allow"])
def test_check_of_clean_pickles_passes(policy: PicklePolicy) -> None:
    result = pickle_check([("archive/data.pkl", CLEAN), ("extra.pkl", CLEAN)], policy)
    assert result.status == "pass"
    assert result.detail == "2 pickle streams (archive/data.pkl, extra.pkl): 2 imports, all on the allow-list"
    only = pickle_check([("", PickleScan((), (), None))], policy)
    assert only.detail == "1 pickle stream (the artifact): no imports"


@pytest.mark.parametrize(("policy", "status"), [("reject", "fail"), ("warn", "warn"), ("allow", "pass")])
def test_check_of_findings_follows_the_policy(policy: PicklePolicy, status: str) -> None:
    result = pickle_check([("good.pkl", CLEAN), ("archive/data.pkl", HOSTILE_SCAN), ("", BROKEN)], policy)
    assert result.id == "pickle"
    assert result.status == status
    findings = (
        "archive/data.pkl has unsafe imports os.system; "
        "the artifact could not be fully scanned (truncated in BINBYTES at byte 12)"
    )
    assert result.detail == (f"allowed by the pickle policy: {findings}" if policy == "allow" else findings)


@pytest.mark.parametrize(("policy", "status"), [("reject", "fail"), ("warn", "warn"), ("allow", "pass")])
def test_check_of_an_error_alone_follows_the_policy(policy: PicklePolicy, status: str) -> None:
    result = pickle_check([("model.pt", PickleScan((), (), "empty"))], policy)
    assert result.status == status
    assert "model.pt could not be fully scanned (empty)" in result.detail


def test_check_detail_is_short_and_printable() -> None:
    many = PickleScan((), tuple(f"evil.f{i}" for i in range(12)), "unknown opcode 0xff at byte 9")
    result = pickle_check([("a.pkl", many)], "reject")
    assert result.detail == (
        "a.pkl has unsafe imports evil.f0, evil.f1, evil.f2, evil.f3, evil.f4 and 7 more"
        " and could not be fully scanned (unknown opcode 0xff at byte 9)"
    )
    streams = [(f"m{i}.pkl", HOSTILE_SCAN) for i in range(8)]
    assert pickle_check(streams, "warn").detail.endswith(
        "m4.pkl has unsafe imports os.system; and 3 more streams with findings"
    )
    odd = PickleScan(("x\ny.z" + "q" * 500,), ("x\ny.z" + "q" * 500,), None)
    detail = pickle_check([("bad\nname", odd)], "reject").detail
    assert "\n" not in detail
    assert detail.startswith("bad\\nname has unsafe imports x\\ny.zqqq")
    assert len(detail) < 300
