"""Artifacts for the content checks, built here: hostile and benign streams, and containers to nest them in.

Nothing here is ever loaded: hostile pickles only name their callables (`pickle.dumps` writes
`os.system` by name, it does not call it).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import pickle
import random
import struct
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable

from backports import zstd


class Reduces:
    """Pickles to a call of `function(*args)`, never made here."""

    def __init__(self, function: object, args: tuple[object, ...]) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.function, self.args


HOSTILE_PICKLE = pickle.dumps(Reduces(os.system, ("echo pwned",)), protocol=2)
PROTOCOL_0_HOSTILE = b"cos\nsystem\n(S'echo pwned'\ntR."  # no PROTO opcode, no magic of any kind
BENIGN_PICKLE = pickle.dumps(OrderedDict(weight=[1.0, 2.0]), protocol=2)


def manifest(name: str = "my-pkg", version: str = "1.2.0", license_: str = "MIT") -> bytes:
    return json.dumps({"name": name, "version": version, "license": license_}).encode()


def zip_of(*entries: tuple[str, bytes], stored: bool = False) -> bytes:
    buffer = io.BytesIO()
    compression = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_of(*entries: tuple[str, bytes], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:  # type: ignore[call-overload]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def torch_checkpoint(data_pkl: bytes, tensors: int = 2, tensor_bytes: int = 64) -> bytes:
    """The layout `torch.save` writes: a stored zip with `archive/data.pkl`, raw tensor files, a version."""
    rng = random.Random(tensors)
    return zip_of(
        ("archive/data.pkl", data_pkl),
        *((f"archive/data/{index}", rng.randbytes(tensor_bytes)) for index in range(tensors)),
        ("archive/version", b"3\n"),
        stored=True,
    )


def npy(array_bytes: bytes, descr: str = "<f4", shape: tuple[int, ...] = (4,)) -> bytes:
    """A NumPy `.npy` file (format 1.0): the magic, a padded header, then the data."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin-1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + array_bytes


def object_npy(pickled: bytes) -> bytes:
    """An array of objects, as `np.save(..., allow_pickle=True)` writes it: a pickle after the header."""
    return npy(pickled, descr="|O", shape=(1,))


def safetensors_file(*, broken: bool = False) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    data = bytes(8)
    return struct.pack("<Q", len(header)) + header + (data[:4] if broken else data)


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": zstd.compress,
}

# How to put a member into each kind of container: (name of the container, builder).
CONTAINERS: dict[str, Callable[[str, bytes], tuple[str, bytes]]] = {
    "zip": lambda name, data: (f"{name}.zip", zip_of((name, data))),
    "stored zip": lambda name, data: (f"{name}.zip", zip_of((name, data), stored=True)),
    "tar": lambda name, data: (f"{name}.tar", tar_of((name, data))),
    "tar.gz": lambda name, data: (f"{name}.tar.gz", tar_of((name, data), compression="gz")),
    "tar.bz2": lambda name, data: (f"{name}.tar.bz2", tar_of((name, data), compression="bz2")),
    "tar.xz": lambda name, data: (f"{name}.tar.xz", tar_of((name, data), compression="xz")),
    "tar.zst": lambda name, data: (f"{name}.tar.zst", zstd.compress(tar_of((name, data)))),
    "gz": lambda name, data: (f"{name}.gz", gzip.compress(data)),
    "bz2": lambda name, data: (f"{name}.bz2", bz2.compress(data)),
    "xz": lambda name, data: (f"{name}.xz", lzma.compress(data)),
    "zst": lambda name, data: (f"{name}.zst", zstd.compress(data)),
    "npz": lambda name, data: (f"{name}.npz", zip_of((name, data))),
    "pt": lambda name, data: (f"{name}.pt", torch_checkpoint(data)),
}


def nest(data: bytes, name: str, *kinds: str) -> tuple[str, bytes]:
    """`data` named `name`, put into each kind of container in turn, innermost first."""
    for kind in kinds:
        name, data = CONTAINERS[kind](name, data)
    return name, data
