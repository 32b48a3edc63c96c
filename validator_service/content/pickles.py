"""What a pickle would import if it were loaded, found without loading it.

Loading a pickle runs code: the stream names callables by module and attribute (`GLOBAL`, `INST`,
`STACK_GLOBAL`; `EXT1/2/4` name them through copyreg's extension registry, empty in any loader
that does not fill it itself), the unpickler imports them, and `REDUCE`, `BUILD`, `INST`, `OBJ`,
`NEWOBJ` and `NEWOBJ_EX` call them. Everything else a pickle builds is plain data (numbers,
strings, bytes, lists, dicts, tuples, sets), so a pickle whose every import is on an allow-list
of harmless callables (`SAFE_IMPORTS`) can only call those.

`scan_pickle` reads a stream opcode by opcode with the opcode table of `pickletools`, but with its
own argument reading (`pickletools.genops` reads every argument whole, so a `BINBYTES8` claiming
a terabyte would be read into memory): payloads are skipped in bounded chunks and only strings
short enough to be a module or attribute name are kept. It simulates the unpickler's stack and
memo just enough to know which strings `STACK_GLOBAL` takes, and gives up (`error`) rather than
guess when the stream is malformed or exceeds a limit. Memory stays bounded whatever the size
of the stream; the time is linear in it.

Whether a stream is a pickle at all is decided by its bytes, never by its name: every stream is
scanned from its first byte, the way `pickle.load` would read it. `pickle.load` runs each opcode
as it reads it, so a stream that breaks (an unknown opcode, a stack underflow, its end before
`STOP`) has already done whatever came before the break. The rule, in `scan_pickle`:

- A stream that reaches `STOP` is a pickle, judged by everything it imports.
- A stream that breaks is judged by what it did before the break. If it imported something the
  loader could really import, or called something it imported, it is a pickle, judged by those
  imports, and it also fails as "could not be fully scanned". Otherwise it is not a pickle: the
  loader would raise at the break having run nothing. Raw bytes (tensor data, `.bin` files,
  text) read as a few opcodes and then break; they are "not a pickle", whatever their name.
- "Could really import": a module name made of Python identifiers, of a module that exists
  wherever a pickle is loaded (the standard library, or a package that ML environments ship:
  `KNOWN_MODULES`). The loader imports the module before it looks the name up, so the name
  does not matter: importing `unittest.__main__` alone runs test discovery.
  A line of text read as `GLOBAL` ("click\ncolorama\n" imports `lick.colorama`) names no such
  module, so the loader would fail there (`ModuleNotFoundError`) without running anything, unless
  a call follows: a call after an import is counted whatever was imported.
- A stream the scanner cannot finish for its own limits (a stack of a million entries, say) is a
  pickle that could not be fully scanned: the loader would go on.

A stream may hold several pickles one after another (PyTorch's legacy `torch.save` writes five,
then raw tensor bytes; its loader unpickles each in turn). After a `STOP`, the bytes that follow
are scanned as another pickle, under the same rule: one that breaks having imported nothing
counted is taken for trailing data and dropped.

Nothing here catches `StorageError`: a failed read of the stream propagates to the caller.
"""

from __future__ import annotations

import _compat_pickle
import enum
import pickle
import pickletools
import re
import sys
from _codecs import escape_decode
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from validator_service.content import CheckResult, CheckStatus, PicklePolicy

# --- limits --------------------------------------------------------------------------------------

READ_CHUNK = 64 * 1024  # bytes buffered from the stream for opcodes and their small arguments
SKIP_CHUNK = 1024 * 1024  # bytes read at a time when skipping a payload nobody needs
MAX_NAME_BYTES = 1000  # longer strings cannot be a name worth resolving: their value is not kept
MAX_INDEX_LINE = 64  # bytes of a protocol 0 `PUT`/`GET` index; longer ones are not interpreted
MAX_STACK_DEPTH = 1_000_000  # values and marks on the simulated stack
MAX_STACK_CHARS = 10_000_000  # characters of strings kept on the stack; beyond, strings are unknown
MAX_MEMO_STRINGS = 100_000  # string values kept in the simulated memo; beyond, they are unknown
MAX_MEMO_CHARS = 10_000_000  # characters of the strings kept in the memo
MAX_MEMO_SPARSE_KEYS = 100_000  # memo keys set out of sequence (a pickler sets them in sequence)
MAX_IMPORTS = 10_000  # distinct imports recorded in one stream
MAX_SHOWN = 5  # names, and streams, listed in a check's detail before "and N more"
MAX_SHOWN_CHARS = 100  # characters of one name shown in a check's detail

KNOWN_MODULES: frozenset[str] = frozenset(sys.stdlib_module_names) | frozenset(
    [
        "test",  # CPython's own test suite: installed with it, not in stdlib_module_names
        # Python 2 names that fix_imports maps are resolved before this is consulted.
        *("torch", "torchvision", "torchaudio", "numpy", "scipy", "pandas", "sklearn", "joblib", "dill"),
        *("cloudpickle", "tensorflow", "keras", "jax", "jaxlib", "flax", "transformers", "tokenizers"),
        *("huggingface_hub", "safetensors", "accelerate", "datasets", "timm", "lightning", "pytorch_lightning"),
        *("xgboost", "lightgbm", "catboost", "sentencepiece", "PIL", "cv2", "matplotlib", "IPython"),
        *("yaml", "requests", "urllib3", "setuptools", "pkg_resources", "pip", "_pytest", "pytest", "fickling"),
        *("onnx", "onnxruntime", "mlflow", "sagemaker", "boto3", "botocore", "aiohttp", "httpx", "psutil"),
    ]
)
"""Top-level modules that exist wherever a pickle is likely to be loaded: an import of one of them,
in a stream that breaks later, is an import the loader really makes (see the module docstring)."""

# --- the allow-list ------------------------------------------------------------------------------

_TORCH_STORAGES = (
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "ComplexFloatStorage",
    "ComplexDoubleStorage",
    "QUInt8Storage",
    "QInt8Storage",
    "QInt32Storage",
    "QUInt4x2Storage",
    "QUInt2x4Storage",
    "UntypedStorage",
)
_TORCH_DTYPES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "complex32",
    "complex64",
    "complex128",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "bool",
    "qint8",
    "quint8",
    "qint32",
    "quint4x2",
    "quint2x4",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float",
    "double",
    "half",
    "cfloat",
    "cdouble",
    "chalf",
    "long",
    "int",
    "short",
)

SAFE_IMPORTS: frozenset[str] = frozenset(
    [
        # Containers and values. These build data from data: a pickle can only hand them its own
        # values and other allowed imports. (Some can be asked for a huge allocation, bytearray(10**12):
        # that is a denial of service, which an unpickler allows with plain opcodes anyway.)
        "builtins.set",
        "builtins.frozenset",
        "builtins.slice",
        "builtins.complex",
        "builtins.bytearray",
        "builtins.bytes",
        "builtins.range",
        "builtins.list",
        "builtins.dict",
        "builtins.tuple",
        "builtins.int",
        "builtins.float",
        "builtins.bool",
        "builtins.str",
        "builtins.object",  # the usual `base` given to copyreg._reconstructor
        "collections.OrderedDict",
        "collections.defaultdict",  # its default factory is an import of its own, checked as such
        "collections.Counter",
        "datetime.datetime",
        "datetime.date",
        "datetime.time",
        "datetime.timedelta",
        "datetime.timezone",
        "decimal.Decimal",
        "uuid.UUID",
        "uuid.SafeUUID",  # part of a UUID's pickled state
        "argparse.Namespace",  # training arguments saved with checkpoints (fairseq and others)
        # How protocols 0-2 pickle bytes (`_codecs.encode(text, "latin1")`) and plain objects.
        "_codecs.encode",
        "copyreg._reconstructor",
        # NumPy arrays, dtypes and scalars (numpy 1.x as numpy.core, 2.x as numpy._core).
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.ndarray",
        "numpy.dtype",
        # PyTorch tensors and parameters as torch.save writes them; storages come through the
        # loader's persistent_load, which the stream names by storage class.
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",  # calls its first argument: an import, checked as such
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "torch.Size",
        "torch.device",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
        *(f"torch.{name}" for name in _TORCH_STORAGES),
        *(f"torch.{name}" for name in _TORCH_DTYPES),
    ]
)
"""Imports that are harmless when a pickle of ML weights is loaded, as "module.qualname".

An allow-list, not a deny-list: everything else is unsafe, including all that can run code or
reach the system (`os`, `posix`, `subprocess`, `builtins.eval`/`exec`/`getattr`/`__import__`/
`open`, `importlib`, `pickle`, `functools.partial`, `operator.attrgetter`, `torch.load` ...). An
import matches only when split the way picklers write it: the module, then a name without dots
(protocol 4 also resolves dotted names attribute by attribute; those are all unsafe here).
"""

# --- scanning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PickleScan:
    """What one stream of pickles imports, and whether it could be read to the end."""

    imports: tuple[str, ...]
    """Every import the stream makes, as "module.qualname", in first-seen order, without repeats."""
    unsafe: tuple[str, ...]
    """The imports not in `SAFE_IMPORTS`, plus "<unresolved STACK_GLOBAL>" for an import whose
    names could not be known."""
    error: str | None
    """Why the stream could not be scanned to the end (empty, truncated, unknown opcode, over a
    limit); None if it was. For a stream that is not a pickle, where its bytes stopped being one."""
    is_pickle: bool = True
    """Whether the stream is a pickle (see the module docstring); when not, `imports` is empty."""


class Readable(Protocol):
    """What the scanner reads: up to `size` bytes at a time, b"" at the end (a binary file will do)."""

    def read(self, size: int, /) -> bytes: ...


class _Token(enum.Enum):
    """Stack entries other than known strings."""

    ANY = "any"  # any value, a string among others (a call's result, a memo entry not kept)
    STR = "str"  # a string whose value was not kept (too long, or over the budget)
    OTHER = "other"  # a value that is not a string (a number, bytes, a container ...)
    MARK = "mark"


_Value: TypeAlias = "str | _Token"


class _ScanError(Exception):
    """The stream cannot be scanned further."""


class _Malformed(_ScanError):
    """A malformed stream: an unpickler fails at the same opcode."""


class _Unscannable(_ScanError):
    """A limit of this scanner: an unpickler would go on."""


@dataclass(frozen=True)
class _Op:
    """An opcode, and its generic effect on the stack from `pickletools`' description."""

    name: str
    arg: pickletools.ArgumentDescriptor | None
    pops_mark: bool  # pops everything down to the topmost MARK, and the MARK ...
    pops: int  # ... then this many values
    pushes: int
    pushed: _Token  # what kind of value it pushes: ANY, STR (its argument, if kept) or OTHER


_STRING_TYPES = frozenset({pickletools.pyunicode, pickletools.pybytes_or_str})


def _op_table() -> dict[int, _Op]:
    table = {}
    for info in pickletools.opcodes:
        before, after = info.stack_before, info.stack_after
        # A MARK in stack_before is followed by `stackslice`, "everything above the mark".
        pops_mark = pickletools.markobject in before
        pops = before.index(pickletools.markobject) if pops_mark else len(before)
        if any(kind is pickletools.anyobject for kind in after):
            pushed = _Token.ANY
        elif any(kind in _STRING_TYPES for kind in after):
            pushed = _Token.STR
        else:
            pushed = _Token.OTHER
        table[ord(info.code)] = _Op(info.name, info.arg, pops_mark, pops, len(after), pushed)
    return table


_OPS = _op_table()

# Opcodes that call a value from the stack (INST too, handled with the imports). The only
# callables a pickle can put on the stack come from its imports (or from the loader's own
# persistent_load), so checking every import covers every call.
_CALLS = frozenset({"REDUCE", "BUILD", "OBJ", "NEWOBJ", "NEWOBJ_EX"})
# A backslash escape that Python does not know, or an octal one beyond a byte.
_UNKNOWN_ESCAPE = re.compile(rb"\\([^\\'\"abfnrtvx0-7\n]|[4-7][0-7][0-7])")
# What int() accepts in a decimal (with some to spare: all control characters).
_DECIMAL_BYTES = bytes(range(0x21)) + b"0123456789_+-"
_COUNTED_BYTE_STRINGS = frozenset({"string1", "string4"})  # SHORT_BINSTRING, BINSTRING
_COUNTED_TEXT_STRINGS = frozenset({"unicodestring1", "unicodestring4", "unicodestring8"})


class _Reader:
    """Buffered, bounded reads from the stream; `offset` counts from where the scan started."""

    def __init__(self, stream: Readable, size: int | None) -> None:
        self._stream = stream
        self._size = size  # of the stream from where the scan started, when known
        self._buffer = b""
        self._position = 0  # in the buffer
        self._base = 0  # offset of the buffer's first byte

    @property
    def offset(self) -> int:
        return self._base + self._position

    def peek_byte(self) -> int | None:
        """The next byte without consuming it; None at the end of the stream."""
        if self._position == len(self._buffer) and not self._fill():
            return None
        return self._buffer[self._position]

    def read_byte(self) -> int | None:
        """The next byte; None at the end of the stream."""
        if self._position == len(self._buffer) and not self._fill():
            return None
        self._position += 1
        return self._buffer[self._position - 1]

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, for small sizes only (they are buffered)."""
        while len(self._buffer) - self._position < size:
            if not self._fill():
                raise _Malformed("truncated")
        data = self._buffer[self._position : self._position + size]
        self._position += size
        return data

    def skip(self, size: int) -> None:
        """Consume `size` bytes without keeping them, reading at most `SKIP_CHUNK` at a time."""
        if self._size is not None and self.offset + size > self._size:
            raise _Malformed("truncated")  # known without reading through what is there
        available = len(self._buffer) - self._position
        if size <= available:
            self._position += size
            return
        size -= available
        self._base += len(self._buffer)
        self._buffer, self._position = b"", 0
        while size > 0:
            data = self._stream.read(min(size, SKIP_CHUNK))
            if not data:
                raise _Malformed("truncated")
            size -= len(data)
            self._base += len(data)

    def read_line(self, keep: int) -> tuple[bytes, bool]:
        """The next line without its newline, cut to `keep` bytes, and whether it was longer.

        The rest of a long line is read and dropped as it comes, so no line is held whole.
        """
        head = b""
        longer = False
        while True:
            newline = self._buffer.find(b"\n", self._position)
            end = len(self._buffer) if newline < 0 else newline
            room = keep - len(head)
            if end - self._position > room:
                longer = True
            if room > 0:
                head += self._buffer[self._position : min(end, self._position + room)]
            self._position = end
            if newline >= 0:
                self._position += 1
                return head, longer
            if not self._fill():
                raise _Malformed("truncated")

    def _fill(self) -> bool:
        """Append the stream's next chunk to what is left of the buffer; False at its end."""
        data = self._stream.read(READ_CHUNK)
        if not data:
            return False
        self._base += self._position
        self._buffer = self._buffer[self._position :] + data
        self._position = 0
        return True


class _Memo:
    """The unpickler's memo, as far as it matters here.

    Which keys are set, because `MEMOIZE` stores at `len(memo)`: keys are set in sequence from 0
    by every pickler, so they are kept as a count, plus a bounded set of those set out of order.
    And the string values, within a budget: a `GET` of anything else gives an unknown value.
    """

    def __init__(self) -> None:
        self._dense = 0  # keys 0 .. _dense - 1 are all set
        self._sparse: set[int] = set()  # the other keys set
        self._strings: dict[int, str] = {}
        self._chars = 0

    def __len__(self) -> int:
        return self._dense + len(self._sparse)

    def put(self, key: int, value: _Value) -> None:
        if key == self._dense:
            self._dense += 1
            while self._dense in self._sparse:
                self._sparse.remove(self._dense)
                self._dense += 1
        elif key > self._dense and key not in self._sparse:
            if len(self._sparse) >= MAX_MEMO_SPARSE_KEYS:
                raise _Unscannable(f"more than {MAX_MEMO_SPARSE_KEYS} memo keys out of sequence")
            self._sparse.add(key)
        old = self._strings.pop(key, None)
        if old is not None:
            self._chars -= len(old)
        if (
            isinstance(value, str)
            and len(self._strings) < MAX_MEMO_STRINGS
            and self._chars + len(value) <= MAX_MEMO_CHARS
        ):
            self._strings[key] = value
            self._chars += len(value)

    def get(self, key: int) -> _Value:
        if key >= self._dense and key not in self._sparse:
            raise _Malformed(f"memo key {key} was never set")  # the unpickler fails the same way
        return self._strings.get(key, _Token.ANY)


class _Pickle:
    """Runs one pickle, from the reader's position to its `STOP`, collecting its imports."""

    def __init__(self, reader: _Reader, import_budget: int) -> None:
        self._reader = reader
        self._import_budget = import_budget
        self._stack: list[_Value] = []
        self._stack_chars = 0
        self._memo = _Memo()
        self._protocol = 0  # as set by PROTO, for the Python 2 name mapping
        self._marks = 0  # MARKs on the stack
        self.imports: dict[str, None] = {}  # ordered sets
        self.unsafe: dict[str, None] = {}
        self._imported = False
        self._known_import = False  # an import the loader really makes (see the module docstring)
        self._called_import = False  # a call after an import: loading it could have run something

    @property
    def counts(self) -> bool:
        """Whether what this pickle did so far makes it a pickle even if it breaks next."""
        return self._known_import or self._called_import

    def run(self) -> None:
        """Interpret opcodes up to and including `STOP`; `_ScanError` if that is not possible."""
        while True:
            start = self._reader.offset
            code = self._reader.read_byte()
            if code is None:
                raise _Malformed(f"truncated: the stream ends at byte {start}, before STOP")
            op = _OPS.get(code)
            if op is None:
                raise _Malformed(f"unknown opcode 0x{code:02x} at byte {start}")
            try:
                _HANDLERS.get(op.name, _Pickle._generic)(self, op)
            except _ScanError as error:
                raise type(error)(f"{error} in {op.name} at byte {start}") from None
            if op.name == "STOP":
                return

    # --- opcodes (each reads its argument, which follows it) ---

    def _generic(self, op: _Op) -> None:
        """The opcodes that only build data or call (see `_CALLS`): their effect from pickletools."""
        value = self._read_argument(op)
        if op.pops_mark:
            self._pop_mark()
        for _ in range(op.pops):
            self._pop()
        for _ in range(op.pushes):
            self._push(value if value is not None and op.pushed is _Token.STR else op.pushed)
        if op.name in _CALLS:
            self._call()

    def _global(self, op: _Op) -> None:
        """GLOBAL and INST: an import named by two lines, "module\\nname\\n"."""
        if op.name == "INST" and not self._marks:
            raise _Malformed("no MARK")  # the unpickler looks for the MARK before it imports
        module, qualname, overlong = self._read_names("ascii" if op.name == "INST" else "utf-8")
        self._record_import(module, qualname, overlong)
        if op.name == "INST":  # instantiates the class with what is above the topmost MARK
            self._pop_mark()
            self._call()
        self._push(_Token.ANY)

    def _stack_global(self, op: _Op) -> None:
        """STACK_GLOBAL: an import named by the two topmost values, module below name."""
        name_value, module_value = self._pop(), self._pop()
        if name_value is _Token.OTHER or module_value is _Token.OTHER:
            raise _Malformed("STACK_GLOBAL requires two strings")  # as the unpickler says
        if isinstance(module_value, str) and isinstance(name_value, str):
            self._record_import(module_value, name_value, overlong=False)
        else:
            self._record_marker("<unresolved STACK_GLOBAL>")
        self._push(_Token.ANY)

    def _extension(self, op: _Op) -> None:
        """EXT1, EXT2, EXT4: an object by code from copyreg's extension registry. The registry is
        empty unless the loading program fills it (neither the standard library nor PyTorch, NumPy
        or the ML frameworks' loaders do), so the unpickler fails here ("unregistered extension
        code") before it imports anything; what a program registers itself is its own choice."""
        code = self._read_fixed(op)
        raise _Malformed(f"unregistered extension code {code}")

    def _proto(self, op: _Op) -> None:
        proto = self._read_fixed(op)
        if proto > pickle.HIGHEST_PROTOCOL:
            raise _Malformed(f"unsupported protocol {proto}")
        self._protocol = proto

    def _put(self, op: _Op) -> None:
        """PUT, BINPUT, LONG_BINPUT, MEMOIZE: store the topmost value in the memo."""
        key = len(self._memo) if op.name == "MEMOIZE" else self._read_index(op)
        self._memo.put(key, self._top())

    def _get(self, op: _Op) -> None:
        self._push(self._memo.get(self._read_index(op)))

    def _dup(self, op: _Op) -> None:
        self._push(self._top())

    def _mark(self, op: _Op) -> None:
        self._push(_Token.MARK)
        self._marks += 1

    def _pop_op(self, op: _Op) -> None:
        """POP: pops a MARK too, when nothing is above it."""
        if self._stack and self._stack[-1] is _Token.MARK:
            self._stack.pop()
            self._marks -= 1
        else:
            self._pop()

    def _stop(self, op: _Op) -> None:
        self._pop()

    # --- arguments ---

    def _read_fixed(self, op: _Op) -> int:
        """A fixed-size integer argument (uint1, uint2, int4, uint4, uint8)."""
        arg = op.arg
        assert arg is not None  # true of the opcodes this is used for
        return int.from_bytes(self._reader.read(arg.n), "little", signed=arg.name == "int4")

    def _read_index(self, op: _Op) -> int:
        """A memo key: binary, or a decimal line (protocol 0) read the way the unpickler does."""
        if op.arg is not None and op.arg.n != pickletools.UP_TO_NEWLINE:
            return self._read_fixed(op)
        line, longer = self._reader.read_line(MAX_INDEX_LINE)
        if longer and not line.translate(None, _DECIMAL_BYTES):
            # int() takes any length of padding: not for this scanner to decide what it comes to.
            raise _Unscannable(f"memo index longer than {MAX_INDEX_LINE} bytes")
        try:
            key = int(line)
        except ValueError:
            raise _Malformed("memo index is not a number") from None
        if key < 0:
            raise _Malformed("negative memo index")
        return key

    def _read_names(self, encoding: str) -> tuple[str, str, bool]:
        """The module and name lines of `GLOBAL`/`INST`, and whether either was too long to keep."""
        module, module_longer = self._reader.read_line(MAX_NAME_BYTES)
        qualname, qualname_longer = self._reader.read_line(MAX_NAME_BYTES)
        if module_longer or qualname_longer:  # unsafe whatever the rest is: shown as far as kept
            return module.decode(encoding, "backslashreplace"), qualname.decode(encoding, "backslashreplace"), True
        try:
            return module.decode(encoding), qualname.decode(encoding), False
        except UnicodeDecodeError:
            raise _Malformed(f"import names that are not {encoding}") from None

    def _read_argument(self, op: _Op) -> str | None:
        """Read (or skip) the argument of an opcode handled generically: the string it pushes, if kept."""
        arg = op.arg
        if arg is None:
            return None
        if arg.n >= 0:  # fixed size: numbers
            self._reader.skip(arg.n)
            return None
        if arg.n == pickletools.UP_TO_NEWLINE:
            return self._read_line_argument(arg)
        size = self._read_size(arg.n)
        if size <= MAX_NAME_BYTES and arg.name in _COUNTED_BYTE_STRINGS:
            return _decode(self._reader.read(size), "latin-1")
        if size <= MAX_NAME_BYTES and arg.name in _COUNTED_TEXT_STRINGS:
            return _decode(self._reader.read(size), "utf-8", "surrogatepass")
        self._reader.skip(size)
        return None

    def _read_line_argument(self, arg: pickletools.ArgumentDescriptor) -> str | None:
        """A protocol 0 argument: the value of a STRING or UNICODE, if short; other lines are numbers."""
        line, longer = self._reader.read_line(MAX_NAME_BYTES + 2)  # 2 for the quotes of STRING
        if longer:
            return None
        if arg.name == "stringnl":
            return _decode_string_line(line)
        if arg.name == "unicodestringnl":
            return _decode(line, "raw-unicode-escape")
        return None

    def _read_size(self, kind: int) -> int:
        """The byte count that precedes a counted argument."""
        if kind == pickletools.TAKEN_FROM_ARGUMENT1:
            return self._reader.read(1)[0]
        if kind == pickletools.TAKEN_FROM_ARGUMENT4:
            size = int.from_bytes(self._reader.read(4), "little", signed=True)
            if size < 0:
                raise _Malformed("negative byte count")
            return size
        if kind == pickletools.TAKEN_FROM_ARGUMENT4U:
            return int.from_bytes(self._reader.read(4), "little")
        if kind == pickletools.TAKEN_FROM_ARGUMENT8U:
            return int.from_bytes(self._reader.read(8), "little")
        raise AssertionError(f"argument kind {kind}")  # pickletools has no other

    # --- the stack ---

    def _push(self, value: _Value) -> None:
        if len(self._stack) >= MAX_STACK_DEPTH:
            raise _Unscannable(f"stack deeper than {MAX_STACK_DEPTH} entries")
        if isinstance(value, str):
            if self._stack_chars + len(value) > MAX_STACK_CHARS:
                value = _Token.STR
            else:
                self._stack_chars += len(value)
        self._stack.append(value)

    def _top(self) -> _Value:
        """The topmost value; a MARK is not a value (the unpickler keeps marks apart)."""
        if not self._stack or self._stack[-1] is _Token.MARK:
            raise _Malformed("stack underflow")
        return self._stack[-1]

    def _pop(self) -> _Value:
        value = self._top()
        self._stack.pop()
        if isinstance(value, str):
            self._stack_chars -= len(value)
        return value

    def _pop_mark(self) -> None:
        """Pop everything above the topmost MARK, and the MARK."""
        if not self._marks:
            raise _Malformed("stack underflow (no MARK)")
        while (value := self._stack.pop()) is not _Token.MARK:
            if isinstance(value, str):
                self._stack_chars -= len(value)
        self._marks -= 1

    # --- findings ---

    def _record_import(self, module: str, qualname: str, overlong: bool) -> None:
        if self._protocol < 3:
            # What Unpickler.find_class does for protocols 0-2 (fix_imports, on by default): map
            # Python 2 names to Python 3 ones ("__builtin__.set" is "builtins.set"), so these are
            # judged by what would really be imported. The Python 2 modules themselves do not exist.
            if (module, qualname) in _compat_pickle.NAME_MAPPING:
                module, qualname = _compat_pickle.NAME_MAPPING[(module, qualname)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{qualname}"
        if overlong:
            full += "..."  # never an allow-listed name
        safe = not overlong and "." not in qualname and full in SAFE_IMPORTS
        if full not in self.imports and len(self.imports) >= self._import_budget:
            raise _Unscannable(f"more than {MAX_IMPORTS} distinct imports")
        self.imports[full] = None
        if not safe:
            self.unsafe[full] = None
        self._imported = True
        # The unpickler imports the module before it looks the name up: the module alone counts.
        if _is_dotted_identifier(module):
            self._known_import |= module.partition(".")[0] in KNOWN_MODULES

    def _record_marker(self, marker: str) -> None:
        self.unsafe[marker] = None
        self._imported = True

    def _call(self) -> None:
        if self._imported:
            self._called_import = True


_HANDLERS: dict[str, Callable[[_Pickle, _Op], None]] = {
    "GLOBAL": _Pickle._global,
    "INST": _Pickle._global,
    "STACK_GLOBAL": _Pickle._stack_global,
    "EXT1": _Pickle._extension,
    "EXT2": _Pickle._extension,
    "EXT4": _Pickle._extension,
    "PROTO": _Pickle._proto,
    "PUT": _Pickle._put,
    "BINPUT": _Pickle._put,
    "LONG_BINPUT": _Pickle._put,
    "MEMOIZE": _Pickle._put,
    "GET": _Pickle._get,
    "BINGET": _Pickle._get,
    "LONG_BINGET": _Pickle._get,
    "DUP": _Pickle._dup,
    "MARK": _Pickle._mark,
    "POP": _Pickle._pop_op,
    "STOP": _Pickle._stop,
}
"""The opcodes that need more than their generic effect on the stack."""


def _is_dotted_identifier(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def _decode(data: bytes, encoding: str, errors: str = "strict") -> str | None:
    """`data` decoded as the unpickler would; None (a string not known) where the unpickler would fail."""
    try:
        return data.decode(encoding, errors)
    except UnicodeDecodeError:
        return None


def _decode_string_line(line: bytes) -> str | None:
    """A protocol 0 `STRING` argument: quoted, with backslash escapes (as `Unpickler.load_string`).

    Decoded as Latin-1: the unpickler decodes with the loader's encoding (ASCII by default), and
    an allow-listed name, all ASCII, comes out of the same bytes whatever the encoding.
    """
    if len(line) < 2 or line[0] != line[-1] or line[:1] not in (b'"', b"'"):
        return None
    if _UNKNOWN_ESCAPE.search(line, 1, len(line) - 1):
        # Not an allowed name (the unpickler keeps the backslash, or fails), and escape_decode
        # would warn: a DeprecationWarning, an exception where warnings are errors.
        return None
    try:
        return escape_decode(line[1:-1])[0].decode("latin-1")
    except ValueError:
        return None


def scan_pickle(stream: Readable, size: int | None = None) -> PickleScan:
    """Scan the pickles in `stream`, from its position on, for what they import, never loading them.

    Whether the stream is a pickle at all is decided here, by the rule of the module docstring.
    Reads the stream front to back, bounded in memory whatever its size (`size`, when known, lets
    a payload that claims more than is left fail without reading through it). Raises nothing of
    its own (malformed content is reported in `error`); a `StorageError` from the stream propagates.
    """
    reader = _Reader(stream, size)
    if reader.peek_byte() is None:
        return PickleScan((), (), "empty", is_pickle=False)
    imports: dict[str, None] = {}
    unsafe: dict[str, None] = {}
    error: str | None = None
    first = True
    while True:
        pickle_ = _Pickle(reader, MAX_IMPORTS - len(imports))
        try:
            pickle_.run()
        except _Malformed as problem:
            # The loader raises at this same opcode. Nothing it did before counts as loading a
            # pickle unless it really imported, or called what it imported: then it is one.
            if not pickle_.counts:
                if first:
                    return PickleScan((), (), str(problem), is_pickle=False)
                break  # bytes after the pickles that only looked like one
            error = str(problem)
        except _Unscannable as problem:
            error = str(problem)  # the scanner's limit, not the loader's: it would go on
        imports.update(pickle_.imports)
        unsafe.update(pickle_.unsafe)
        if error is not None or reader.peek_byte() is None:
            break
        first = False
    return PickleScan(tuple(imports), tuple(unsafe), error)


# --- the check -----------------------------------------------------------------------------------


def pickle_check(
    scans: Sequence[tuple[str, PickleScan]], policy: PicklePolicy, none_found: str = "no pickle found"
) -> CheckResult:
    """The "pickle" check over the scanned streams, each named by its member ("" for the artifact).

    Streams that are not pickles are left out; with none left, the check is skipped (`none_found`).

    Unsafe imports or a stream that could not be scanned fail it under the `reject` policy and
    warn under `warn`; under `allow` it passes, saying what was found.
    """
    scans = [(member, scan) for member, scan in scans if scan.is_pickle]
    if not scans:
        return CheckResult(id="pickle", status="skip", detail=none_found)
    findings = [(member, scan) for member, scan in scans if scan.unsafe or scan.error is not None]
    if not findings:
        imports = {name for _, scan in scans for name in scan.imports}
        streams = _listing([member or "the artifact" for member, _ in scans])
        summary = f"{_count(len(imports), 'import')}, all on the allow-list" if imports else "no imports"
        return CheckResult(
            id="pickle", status="pass", detail=f"{_count(len(scans), 'pickle stream')} ({streams}): {summary}"
        )
    described = [_finding(member, scan) for member, scan in findings[:MAX_SHOWN]]
    if len(findings) > MAX_SHOWN:
        described.append(f"and {_count(len(findings) - MAX_SHOWN, 'more stream')} with findings")
    detail = "; ".join(described)
    if policy == "allow":
        return CheckResult(id="pickle", status="pass", detail=f"allowed by the pickle policy: {detail}")
    status: CheckStatus = "fail" if policy == "reject" else "warn"
    return CheckResult(id="pickle", status=status, detail=detail)


def _finding(member: str, scan: PickleScan) -> str:
    parts = []
    if scan.unsafe:
        parts.append(f"has unsafe imports {_listing(scan.unsafe)}")
    if scan.error is not None:
        parts.append(f"could not be fully scanned ({_show(scan.error, 200)})")
    return f"{_where(member)} {' and '.join(parts)}"


def _where(member: str) -> str:
    """How a stream is named in a detail."""
    return _show(member) if member else "the artifact"


def _listing(items: Sequence[str]) -> str:
    """The first `MAX_SHOWN` items, shown, then how many more."""
    shown = ", ".join(_show(item) for item in items[:MAX_SHOWN])
    return f"{shown} and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else shown


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _show(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """`text` fit for a one-line detail: escaped if it has unprintable characters, shortened."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."
