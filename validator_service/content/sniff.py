"""What container or format a stream of bytes is: from its first bytes, then from its name.

The magic bytes decide, because a name is only what the uploader chose: a tar file without the
`ustar` mark is known by its first header's checksum. A name is a hint only for the legacy `.lzma`
format, which has no reliable magic. Pickles are not sniffed at all: every stream is scanned as one
from its first byte (`pickles.scan_pickle`), whatever its magic or its name says.
"""

from __future__ import annotations

import tarfile
from typing import Final, Literal

Kind = Literal["zip", "tar", "gzip", "bzip2", "xz", "zstd", "7z", "rar", "npy", "safetensors", "other"]

HEAD_SIZE: Final = 512  # what `sniff` looks at: a tar header is 512 bytes, and every other magic is within it
COMPRESSED_KINDS: Final[frozenset[Kind]] = frozenset({"gzip", "bzip2", "xz", "zstd"})
UNOPENABLE_KINDS: Final[frozenset[Kind]] = frozenset({"7z", "rar"})
"""Archive formats Depot cannot open: their content is not inspected, and the `archive` check says so."""

# The safetensors header length limit of the reference implementation: a larger one is not plausible.
SAFETENSORS_MAX_HEADER: Final = 100 * 1024 * 1024

_PREFIX_MAGIC: Final[tuple[tuple[bytes, Kind], ...]] = (
    (b"PK\x03\x04", "zip"),  # a local file header
    (b"PK\x05\x06", "zip"),  # the end record of an empty zip
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),  # RAR 4 (`\x00`) and RAR 5 (`\x01\x00`)
    (b"\x93NUMPY", "npy"),
)


def sniff(head: bytes, filename: str | None) -> Kind:
    """The kind of a stream whose first bytes (up to `HEAD_SIZE`) are `head` and whose name is `filename`.

    The name counts only where the magic says nothing, and only for the legacy `.lzma` format: the
    other formats have a magic, so a name that claims one of them without it is wrong.
    """
    magic = magic_kind(head)
    if magic is not None:
        return magic
    return "xz" if filename and base_name(filename).lower().endswith(".lzma") else "other"


def magic_kind(head: bytes) -> Kind | None:
    """The kind that the first bytes of a stream announce, or None when they announce nothing known."""
    # Safetensors first: its first 8 bytes are a length, so a header of, say, 35615 bytes begins
    # with `\x1f\x8b` (gzip's magic). The test below (a length of at most 100 MiB, so four zero high
    # bytes, and `{` at offset 8) is far more specific than a two-byte magic.
    if _is_safetensors(head):
        return "safetensors"
    for prefix, kind in _PREFIX_MAGIC:
        if head.startswith(prefix):
            return kind
    if head.startswith(b"BZh") and (len(head) < 4 or head[3:4] in b"123456789"):
        return "bzip2"
    if head[257:262] == b"ustar" or _is_old_tar(head):  # POSIX `ustar\x0000` and GNU `ustar  \x00` alike
        return "tar"
    return None


def base_name(filename: str) -> str:
    """The last component of a path, with `/` or `\\` as separators."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


def _is_old_tar(head: bytes) -> bool:
    """A pre-POSIX tar header: 512 bytes whose checksum field matches them (random bytes almost never do)."""
    if len(head) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(head[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.HeaderError:  # the end marker (all zeros) included: an empty tar says nothing
        return False
    return True


def _is_safetensors(head: bytes) -> bool:
    if len(head) < 9 or head[8:9] != b"{":
        return False
    length = int.from_bytes(head[:8], "little")
    if not 2 <= length <= SAFETENSORS_MAX_HEADER:  # `{}` is the smallest header
        return False
    # The JSON object's first key, or its end, or whitespace follows the brace.
    return len(head) < 10 or head[9:10] in b'"} \t\r\n'
