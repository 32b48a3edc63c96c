"""The pickle scanner attacked: properties over generated streams, and second opinions on a corpus.

- Whatever the bytes (arbitrary, long, opcode soup, real pickles mutated), `scan_pickle` returns a
  consistent `PickleScan`, in bounded time, whatever the size of the stream's reads.
- On every pickle `pickle.dumps` writes, it finds every import `pickletools.genops` sees (and no
  other), and calls unsafe each one off the allow-list.
- fickling and picklescan read the corpus of `pickle_corpus` too: whatever they flag, Depot rejects,
  except where the tool is wrong (recorded below, with why).
- Bytes that a loader refuses before running anything are not pickles: the check skips them.

Nothing here loads a pickle: `pickle.dumps` only names the hostile callables.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import datetime
import decimal
import functools
import importlib
import io
import os
import pickle
import pickletools
import shutil
import subprocess
import webbrowser
from collections.abc import Callable
from typing import Any

import pytest
from fickling.analysis import Severity, check_safety
from fickling.fickle import Pickled
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from picklescan.scanner import scan_pickle_bytes

from tests.unit.validator_service.pickle_corpus import (
    BENIGN,
    EVASIONS,
    HOSTILE,
    NOT_PICKLES,
    RANDOM_SIZES,
    random_bytes,
)
from tests.unit.validator_service.test_pickles import PROTOCOLS, Reduces, global_, op, proto, text
from validator_service.content.pickles import SAFE_IMPORTS, PickleScan, pickle_check, scan_pickle

# Fuzzing: hundreds of generated streams per property, the slow tier.
pytestmark = pytest.mark.slow

UNRESOLVED = "<unresolved STACK_GLOBAL>"
MiB = 1024 * 1024

# Fixed examples, so that CI runs the same cases every time; a generous deadline, because a
# hang or a quadratic path is what it is for, not a slow machine (a loaded 2-core runner can stall
# a millisecond's scan for a second).
PROPERTIES = settings(
    deadline=5000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class TrickleFile(io.BytesIO):
    """A BytesIO that hands out at most `chunk` bytes a read, as a network stream may."""

    def __init__(self, data: bytes, chunk: int) -> None:
        super().__init__(data)
        self.chunk = chunk

    def read(self, size: int | None = -1, /) -> bytes:
        return super().read(self.chunk if size is None or size < 0 else min(size, self.chunk))


def scanned(data: bytes, chunk: int = 4093) -> PickleScan:
    """The scan of `data`, once checked consistent with itself, with the check, and with other reads."""
    result = scan_pickle(io.BytesIO(data))
    assert isinstance(result, PickleScan)
    assert len(set(result.imports)) == len(result.imports)
    assert len(set(result.unsafe)) == len(result.unsafe)
    assert set(result.imports) - SAFE_IMPORTS <= set(result.unsafe)
    assert set(result.unsafe) <= {*result.imports, UNRESOLVED}
    if not result.is_pickle:
        assert (result.imports, result.unsafe) == ((), ())
        assert result.error is not None
    status = pickle_check([("x", result)], "reject").status
    if not result.is_pickle:
        assert status == "skip"
    else:
        assert status == ("pass" if not result.unsafe and result.error is None else "fail")
    # How the stream is read must not matter: in small pieces, or with its size known.
    assert scan_pickle(TrickleFile(data, chunk)) == result
    assert scan_pickle(io.BytesIO(data), size=len(data)) == result
    return result


def rejected(data: bytes) -> bool:
    return pickle_check([("x", scan_pickle(io.BytesIO(data)))], "reject").status == "fail"


# --- generated values ----------------------------------------------------------------------------


class Point:
    """A plain object: pickled as its class (an import off the allow-list) and its attributes."""

    def __init__(self, x: object) -> None:
        self.x = x

    class Inner:
        """A nested class: named through builtins.getattr before protocol 4, by a dotted name from 4 on."""

        def __init__(self, y: object) -> None:
            self.y = y


# What the reductions name. Never called: pickle.dumps only writes their names.
ALLOWED_CALLABLES: list[Callable[..., Any]] = [
    collections.OrderedDict,
    set,
    frozenset,
    list,
    bytes,
    complex,
    datetime.timedelta,
    decimal.Decimal,
]
UNSAFE_CALLABLES: list[Callable[..., Any]] = [
    os.system,
    subprocess.Popen,
    builtins.eval,
    builtins.exec,
    builtins.getattr,
    shutil.rmtree,
    webbrowser.open,
    importlib.import_module,
    functools.partial,
    Point,
]
# Strings that are also module and attribute names, so that pickle.dumps memoizes a name as data
# and fetches it back with BINGET for a STACK_GLOBAL.
NAMES = ["posix", "system", "builtins", "eval", "collections", "OrderedDict", "os", "__builtin__"]


def self_containing(items: list[object]) -> list[object]:
    items.append(items)
    return items


def extend_values(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    hashable = st.one_of(st.integers(), st.text(max_size=8), st.sampled_from(NAMES), st.binary(max_size=8))
    return st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(hashable, children, max_size=4),
        st.sets(hashable, max_size=4),
        st.frozensets(hashable, max_size=3),
        st.builds(lambda items: collections.OrderedDict(enumerate(items)), st.lists(children, max_size=3)),
        st.builds(lambda value: [value, value], children),  # shared: a memo GET
        st.builds(self_containing, st.lists(children, max_size=2)),  # a cycle
        st.builds(Point, children),
        st.builds(Point.Inner, children),
        st.builds(
            lambda function, arguments: Reduces(function, tuple(arguments)),
            st.sampled_from(ALLOWED_CALLABLES + UNSAFE_CALLABLES),
            st.lists(children, max_size=2),
        ),
    )


VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=2**62),
        st.floats(),
        st.text(max_size=12),
        st.sampled_from(NAMES),
        st.binary(max_size=12),
        st.builds(bytearray, st.binary(max_size=8)),
        st.datetimes(),
        st.decimals(allow_nan=False),
        st.complex_numbers(allow_nan=False),
    ),
    extend_values,
    max_leaves=16,
)
PICKLED = st.builds(lambda value, protocol: pickle.dumps(value, protocol=protocol), VALUES, st.sampled_from(PROTOCOLS))


# --- 1. never a crash, never a hang --------------------------------------------------------------


@settings(PROPERTIES, max_examples=300)
@given(st.sampled_from([b"", proto(2), proto(4), proto(5), b"(", b"c"]), st.binary(max_size=2000), st.integers(1, 64))
def test_arbitrary_bytes_are_scanned_without_error(prefix: bytes, data: bytes, chunk: int) -> None:
    scanned(prefix + data, chunk)


@settings(PROPERTIES, max_examples=20)
@given(st.integers(0, 2**32), st.integers(0, 2 * MiB), st.sampled_from([b"", proto(4)]))
def test_long_arbitrary_bytes_are_scanned_without_error(seed: int, size: int, prefix: bytes) -> None:
    scanned(prefix + random_bytes(seed, size))


NAME = st.sampled_from([*NAMES, "x y", "_utils._rebuild_tensor_v2"])
NAME_BYTES = st.one_of(NAME.map(str.encode), st.sampled_from([b"", "é".encode()]), st.binary(max_size=6))


@st.composite
def counted(draw: st.DrawFn, width: int, signed: bool = False) -> bytes:
    """A counted argument: its length in `width` bytes (mostly the true one), then the payload."""
    payload = draw(NAME_BYTES)
    bits = 8 * width
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    size = draw(st.one_of(st.just(len(payload)), st.integers(low, high)))
    return size.to_bytes(width, "little", signed=signed) + payload


def line(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda data: data.replace(b"\n", b"") + b"\n")


def argument(info: pickletools.OpcodeInfo) -> st.SearchStrategy[bytes]:
    """An argument for `info`, mostly well-formed, sometimes not."""
    arg = info.arg
    if arg is None:
        return st.just(b"")
    if arg.n >= 0:
        return st.binary(min_size=arg.n, max_size=arg.n)
    if arg.name == "stringnl_noescape_pair":
        return st.builds(bytes.__add__, line(NAME_BYTES), line(NAME_BYTES))
    if arg.name == "stringnl":
        return line(NAME_BYTES.map(lambda name: repr(name.decode("latin-1")).encode("latin-1")))
    if arg.n == pickletools.UP_TO_NEWLINE:
        return line(st.one_of(st.integers(-5, 300).map(lambda n: str(n).encode()), NAME_BYTES))
    widths = {
        pickletools.TAKEN_FROM_ARGUMENT1: 1,
        pickletools.TAKEN_FROM_ARGUMENT4: 4,
        pickletools.TAKEN_FROM_ARGUMENT4U: 4,
        pickletools.TAKEN_FROM_ARGUMENT8U: 8,
    }
    return counted(widths[arg.n], signed=arg.n == pickletools.TAKEN_FROM_ARGUMENT4)


OPCODES = st.sampled_from(pickletools.opcodes).flatmap(
    lambda info: argument(info).map(lambda data: info.code.encode("latin-1") + data)
)
# Opcodes that build the stack an import needs and then use it (names pushed, memoized and fetched
# back, imported, called), so that a soup gets past its first few opcodes.
STRUCTURE = ["MARK", "STACK_GLOBAL", "MEMOIZE", "REDUCE", "TUPLE", "TUPLE1", "EMPTY_TUPLE", "BUILD", "POP", "DUP"]
MEANINGFUL = st.one_of(
    NAME.map(text),
    NAME.map(lambda name: op("STRING", repr(name).encode() + b"\n")),
    st.builds(global_, NAME, NAME),
    st.sampled_from(STRUCTURE).map(op),
    st.integers(0, 3).map(lambda key: op("BINPUT", bytes([key]))),
    st.integers(0, 3).map(lambda key: op("BINGET", bytes([key]))),
)


@settings(PROPERTIES, max_examples=400)
@given(
    st.sampled_from([b"", proto(2), proto(4)]),
    st.lists(st.one_of(MEANINGFUL, OPCODES), max_size=40),
    st.booleans(),
    st.integers(1, 16),
)
def test_opcode_soup_is_scanned_without_error(prefix: bytes, opcodes: list[bytes], stop: bool, chunk: int) -> None:
    scanned(prefix + b"".join(opcodes) + (b"." if stop else b""), chunk)


# Pieces of a stream that are well-formed on their own, given a memo key 0: repeated, they make
# long streams that get far (a growing stack, many imports and memo entries).
UNITS = st.one_of(
    NAME.map(text),
    NAME.map(lambda name: text(name) + op("MEMOIZE")),
    st.builds(lambda module, name: text(module) + text(name) + op("STACK_GLOBAL"), NAME, NAME),
    st.builds(global_, NAME, NAME),
    st.sampled_from(
        [
            op("NONE"),
            op("MARK"),
            op("NONE") + op("POP"),
            op("BINGET", b"\x00"),
            op("EMPTY_LIST") + op("NONE") + op("APPEND"),
            op("MARK") + op("NONE") + op("TUPLE"),
        ]
    ),
)


@settings(PROPERTIES, max_examples=30)
@given(st.lists(st.one_of(UNITS, MEANINGFUL), min_size=1, max_size=4), st.integers(1, 2000), st.booleans())
def test_long_repetitive_streams_are_scanned_without_error(pieces: list[bytes], times: int, stop: bool) -> None:
    # In the deadline only if the time is linear in the length of the stream.
    scanned(proto(4) + text("os") + op("MEMOIZE") + b"".join(pieces) * times + (op("STOP") if stop else b""))


OPCODE_BYTES = sorted({ord(info.code) for info in pickletools.opcodes})


@st.composite
def mutated(draw: st.DrawFn, pickled: st.SearchStrategy[bytes]) -> bytes:
    """A pickle with a few bytes flipped, replaced, inserted, deleted or repeated, or cut short."""
    data = bytearray(draw(pickled))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "replace", "insert", "delete", "truncate", "repeat"]))
        if kind == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "replace":
            data[position : position + 1] = bytes([draw(st.one_of(st.sampled_from(OPCODE_BYTES), st.integers(0, 255)))])
        elif kind == "insert":
            data[position:position] = draw(st.one_of(st.binary(min_size=1, max_size=8), OPCODES))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[position:]
        elif kind == "repeat":
            data[position:position] = data[position : position + draw(st.integers(1, 16))]
    return bytes(data)


@settings(PROPERTIES, max_examples=300)
@given(mutated(st.one_of(PICKLED, st.sampled_from(list(HOSTILE.values())))), st.integers(1, 64))
def test_mutated_pickles_are_scanned_without_error(data: bytes, chunk: int) -> None:
    scanned(data, chunk)


# --- 2. sound on what pickle.dumps writes --------------------------------------------------------

STRING_PUSHES = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})


def genops_imports(data: bytes) -> set[str]:
    """The imports of every pickle in `data`, as `pickletools.genops` reads them.

    For what pickle.dumps writes: the two names of a STACK_GLOBAL are the two values pushed last,
    each by a string opcode or a memo GET of one (MEMOIZE/PUT and FRAME may come in between).
    Python 2 names are mapped as the unpickler maps them before protocol 3.
    """
    imports = set()
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        protocol = 0
        memo: dict[int, object] = {}
        pushed: list[object] = []  # values pushed, as far as they matter: strings, or None
        for info, value, _ in pickletools.genops(stream):
            arg: Any = value  # each opcode's own type, which typeshed cannot tell
            if info.name == "PROTO":
                protocol = arg
            elif info.name in ("GLOBAL", "INST"):
                module, name = arg.split(" ", 1)
                if protocol < 3:
                    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
                    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
                imports.add(f"{module}.{name}")
                pushed.append(None)
            elif info.name == "STACK_GLOBAL":
                module, name = pushed[-2:]
                assert isinstance(module, str), "not a pattern pickle.dumps writes"
                assert isinstance(name, str), "not a pattern pickle.dumps writes"
                imports.add(f"{module}.{name}")
                pushed.append(None)
            elif info.name in MEMO_PUTS:
                memo[len(memo) if info.name == "MEMOIZE" else arg] = pushed[-1]
            elif info.name in MEMO_GETS:
                pushed.append(memo[arg])
            elif info.name in STRING_PUSHES:
                pushed.append(arg)
            elif info.stack_after:
                pushed.append(None)
    return imports


def assert_sound(data: bytes, expected: set[str]) -> None:
    """The scan of `data` finds every import in `expected`, unsafe unless allowed, and no other."""
    result = scanned(data)
    assert result.is_pickle
    assert result.error is None
    assert set(result.imports) >= expected
    assert expected - SAFE_IMPORTS <= set(result.unsafe)
    # Nothing made up either: a false alarm on a plain pickle is a rejected upload.
    assert set(result.imports) == expected
    assert set(result.unsafe) == expected - SAFE_IMPORTS


@settings(PROPERTIES, max_examples=200)
@given(VALUES, st.sampled_from(PROTOCOLS))
def test_every_import_pickle_dumps_writes_is_found(value: object, protocol: int) -> None:
    data = pickle.dumps(value, protocol=protocol)
    assert_sound(data, genops_imports(data))


@settings(PROPERTIES, max_examples=100)
@given(st.lists(PICKLED, min_size=2, max_size=4))
def test_every_import_of_consecutive_pickles_is_found(pickles: list[bytes]) -> None:
    # As the legacy torch.save writes them: each with its own memo, all read by the loader.
    data = b"".join(pickles)
    expected = genops_imports(data)
    assert expected == set().union(*map(genops_imports, pickles))
    assert_sound(data, expected)


def test_the_reference_resolver_follows_memoized_names() -> None:
    # "posix" pickled as data first, then fetched from the memo as the module of the import.
    data = pickle.dumps(["posix", Reduces(os.system, ("echo hi",))], protocol=4)
    assert "BINGET" in {info.name for info, _, _ in pickletools.genops(data)}
    assert genops_imports(data) == {"posix.system"}


# --- 3. second opinions --------------------------------------------------------------------------


def fickling_flags(data: bytes) -> bool:
    """Whether fickling rates the stream above LIKELY_SAFE.

    fickling reads only the first pickle of a stream, and raises on what it cannot read or
    interpret (a truncated stream, protocol 0 FLOAT, NEWOBJ_EX, BYTEARRAY8): a stream it raises on
    is not flagged by it.
    """
    try:
        return bool(check_safety(Pickled.load(data)).severity > Severity.LIKELY_SAFE)
    except Exception:
        return False


def picklescan_flags(data: bytes) -> bool:
    """Whether picklescan finds a dangerous global: one on its deny-list, or a STACK_GLOBAL whose
    names it cannot follow. Its "suspicious" globals are those on neither of its lists (builtins.set,
    datetime.datetime, _codecs.encode ...): no verdict, so not a flag. A stream it raises on
    (a STACK_GLOBAL too early for its look-back) is not flagged by it."""
    try:
        return bool(scan_pickle_bytes(io.BytesIO(data), "sample").infected_files > 0)
    except Exception:
        return False


TOOLS: dict[str, Callable[[bytes], bool]] = {"fickling": fickling_flags, "picklescan": picklescan_flags}

SAMPLES = {**HOSTILE, **EVASIONS, **BENIGN, **NOT_PICKLES}

# Where a tool flags a sample that Depot lets through and the tool is wrong: the benign samples are
# what pickle.dumps, torch and NumPy write for plain data, and the others are refused by a loader
# at their first opcode.
_FICKLING_UNUSED = "fickling rates SUSPICIOUS a value the pickle builds and does not return (UnusedVariables)"
_FICKLING_PY2 = "fickling does not map Python 2 names: __builtin__.set is builtins.set to the loader"
_FICKLING_UPDATE = "fickling rates the items of an OrderedDict (its update) as a bad call (OvertlyBadEval)"
_UUID = "the uuid module runs a command in _get_command_stdout; uuid.UUID only parses its arguments"
_ML = "fickling flags every import outside the standard library: torch's and NumPy's rebuild functions"
FALSE_ALARMS: dict[str, dict[str, str]] = {
    "fickling": {
        "vocabulary, protocol 0": _FICKLING_UNUSED,
        **{f"bytes and sets, protocol {p}": _FICKLING_PY2 for p in (1, 2)},
        **{f"bytes and sets, protocol {p}": _FICKLING_UNUSED for p in (3, 4)},
        **{f"OrderedDict of lists, protocol {p}": _FICKLING_UPDATE for p in range(1, 6)},
        **{f"values of the standard library, protocol {p}": _UUID for p in range(1, 6)},
        **dict.fromkeys(
            [
                "state dict by hand (torch, protocol 2)",
                "numpy array by hand",
                "numpy.pkl written by NumPy",
                "state_dict.pt data.pkl written by torch",
                "checkpoint.pt data.pkl written by torch",
                "dtypes.pt data.pkl written by torch",
            ],
            _ML,
        ),
        # Read as TUPLE (no MARK: the loader fails here), OBJ, LONG_BINPUT "ch==", DUP, STOP.
        "pinned requirements.txt": "fickling rates a stream it cannot interpret LIKELY_UNSAFE",
    },
    "picklescan": {f"values of the standard library, protocol {p}": _UUID for p in PROTOCOLS},
}


# Where a tool flags a sample that Depot lets through and the tool is right (see EVASIONS).
def test_sample_names_are_unique() -> None:
    assert len(SAMPLES) == len(HOSTILE) + len(EVASIONS) + len(BENIGN) + len(NOT_PICKLES)


@pytest.mark.parametrize(("tool", "name"), [pytest.param(t, n, id=f"{t}: {n}") for t in TOOLS for n in SAMPLES])
def test_depot_rejects_every_sample_a_tool_flags(tool: str, name: str) -> None:
    data = SAMPLES[name]
    flagged = TOOLS[tool](data)
    if name in FALSE_ALARMS[tool]:
        assert name in BENIGN or name in NOT_PICKLES
        assert flagged, "no longer a false alarm: take it off FALSE_ALARMS"
        assert not rejected(data)
    elif flagged:
        assert rejected(data), f"{tool} flags it, Depot lets it through"


@pytest.mark.parametrize("name", HOSTILE)
def test_depot_rejects_every_hostile_sample(name: str) -> None:
    result = scanned(HOSTILE[name])
    assert result.is_pickle
    assert result.unsafe
    assert rejected(HOSTILE[name])


@pytest.mark.parametrize("name", BENIGN)
def test_depot_passes_every_benign_sample(name: str) -> None:
    result = scanned(BENIGN[name])
    assert result.is_pickle
    assert result.unsafe == ()
    assert result.error is None


@pytest.mark.parametrize("name", EVASIONS)
def test_a_module_imported_before_the_stream_breaks_makes_a_pickle(name: str) -> None:
    # The loader imports the module, running it, before it fails on the name or the junk after it.
    result = scanned(EVASIONS[name])
    assert result.is_pickle
    assert result.error is not None
    assert rejected(EVASIONS[name])


# --- 4. not pickles ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", RANDOM_SIZES)
def test_random_bytes_are_not_pickles(size: int) -> None:
    for seed in range(20 if size < MiB else 3):
        result = scanned(random_bytes(seed, size))
        assert not result.is_pickle, seed


@pytest.mark.parametrize("name", NOT_PICKLES)
def test_data_and_text_are_not_pickles(name: str) -> None:
    result = scanned(NOT_PICKLES[name])
    assert not result.is_pickle
    assert pickle_check([(name, result)], "reject").status == "skip"


def test_the_textbook_exploit_is_a_pickle_without_a_name() -> None:
    # Only the bytes decide: no file name, no extension.
    result = scanned(b"cos\nsystem\n(S'echo pwned'\ntR.")
    assert result == PickleScan(("os.system",), ("os.system",), None)
    assert pickle_check([("", result)], "reject").status == "fail"
