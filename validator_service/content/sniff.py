"""What kind of file an artifact (or an archive member) is: from its first bytes, then from its name.

The magic bytes decide when they say something, because a name is only what the uploader chose; the
name is the fallback for formats without a reliable magic (pickle protocols 0 and 1, old tar files
without the `ustar` mark) and says which inspection an unrecognizable file claimed to need.
"""

from __future__ import annotations

from typing import Final, Literal

Kind = Literal["zip", "tar", "gzip", "bzip2", "xz", "pickle", "safetensors", "other"]

HEAD_SIZE: Final = 512  # what `sniff` looks at: a tar header is 512 bytes, and every other magic is within it
ARCHIVE_KINDS: Final[frozenset[Kind]] = frozenset({"zip", "tar", "gzip", "bzip2", "xz"})
PICKLE_SUFFIXES: Final = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".ckpt")

# The safetensors header length limit of the reference implementation: a larger one is not plausible.
SAFETENSORS_MAX_HEADER: Final = 100 * 1024 * 1024

_PREFIX_MAGIC: Final[tuple[tuple[bytes, Kind], ...]] = (
    (b"PK\x03\x04", "zip"),  # a local file header
    (b"PK\x05\x06", "zip"),  # the end record of an empty zip
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
)

# Longer suffixes first, so that `.tar.gz` is not taken for `.gz` (both mean a gzip stream here, but
# the order keeps the table honest if they ever differ).
_SUFFIX_KINDS: Final[tuple[tuple[str, Kind], ...]] = (
    (".tar.gz", "gzip"),
    (".tar.bz2", "bzip2"),
    (".tar.xz", "xz"),
    (".tgz", "gzip"),
    (".tbz2", "bzip2"),
    (".tbz", "bzip2"),
    (".txz", "xz"),
    (".tar", "tar"),
    (".zip", "zip"),
    (".gz", "gzip"),
    (".bz2", "bzip2"),
    (".xz", "xz"),
    (".safetensors", "safetensors"),
    *((suffix, "pickle") for suffix in PICKLE_SUFFIXES),
)


def sniff(head: bytes, filename: str | None) -> Kind:
    """The kind of a file whose first bytes (up to `HEAD_SIZE`) are `head` and whose name is `filename`."""
    return magic_kind(head) or name_kind(filename)


def magic_kind(head: bytes) -> Kind | None:
    """The kind that the first bytes of a file announce, or None when they announce nothing known."""
    # Safetensors first: its first 8 bytes are a length, so a header of, say, 640 bytes begins with
    # `\x80\x02` (a pickle's magic) and one of 35615 bytes with `\x1f\x8b` (gzip's). The test below
    # (a length of at most 100 MiB, so four zero high bytes, and `{` at offset 8) is far more
    # specific than those two-byte magics, and no well-formed stream of the other kinds passes it.
    if _is_safetensors(head):
        return "safetensors"
    for prefix, kind in _PREFIX_MAGIC:
        if head.startswith(prefix):
            return kind
    if head.startswith(b"BZh") and (len(head) < 4 or head[3:4] in b"123456789"):
        return "bzip2"
    if head[257:262] == b"ustar":  # POSIX `ustar\x0000` and GNU `ustar  \x00` alike
        return "tar"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # the PROTO opcode of protocols 2 to 5
        return "pickle"
    return None


def name_kind(filename: str | None) -> Kind:
    """The kind a file name claims (by its suffix, case-insensitively), `other` when it claims none."""
    if not filename:
        return "other"
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for suffix, kind in _SUFFIX_KINDS:
        if base.endswith(suffix):
            return kind
    return "other"


def is_pickle_name(filename: str) -> bool:
    """Whether a file name has one of the suffixes that pickles are saved under (`PICKLE_SUFFIXES`)."""
    return filename.lower().endswith(PICKLE_SUFFIXES)


def _is_safetensors(head: bytes) -> bool:
    if len(head) < 9 or head[8:9] != b"{":
        return False
    length = int.from_bytes(head[:8], "little")
    if not 2 <= length <= SAFETENSORS_MAX_HEADER:  # `{}` is the smallest header
        return False
    # The JSON object's first key, or its end, or whitespace follows the brace.
    return len(head) < 10 or head[9:10] in b'"} \t\r\n'
