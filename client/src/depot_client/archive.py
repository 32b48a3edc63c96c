"""A directory packed into a deterministic tar.gz: the same tree gives the same bytes, on any machine.

Entries are sorted by path, owners are 0/root, mtimes fixed, modes reduced to 0755 or 0644,
and the gzip header carries no name and mtime 0. Symbolic links are kept as links when they point
inside the tree and refused otherwise; other special files are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from depot_client.errors import UsageError

FIXED_MTIME = 0
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Packed:
    """A packed directory: the file, its size and sha256 (computed while it was written)."""

    path: Path
    size: int
    sha256: str


class _HashingWriter:
    """A file that hashes and counts what is written to it."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()


def _entries(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, subdirectories, files in os.walk(root, followlinks=False):
        base = Path(directory)
        subdirectories.sort()
        found.extend(base / name for name in subdirectories)
        found.extend(base / name for name in files)
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def _tar_info(root: Path, path: Path, prefix: str) -> tarfile.TarInfo:
    relative = path.relative_to(root).as_posix()
    info = tarfile.TarInfo(f"{prefix}/{relative}" if prefix else relative)
    mode = path.lstat().st_mode
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISLNK(mode):
        target = os.readlink(path)
        resolved = (path.parent / target).resolve()
        if os.path.isabs(target) or not resolved.is_relative_to(root.resolve()):
            raise UsageError(f"{path} links outside the directory ({target}): not packed")
        info.type = tarfile.SYMTYPE
        info.linkname = target
        info.mode = 0o777
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    elif stat.S_ISREG(mode):
        info.size = path.stat().st_size
        info.mode = 0o755 if mode & stat.S_IXUSR else 0o644
    else:
        raise UsageError(f"{path} is not a regular file, a directory or a link: not packed")
    return info


def pack_directory(root: Path, destination: Path, *, prefix: str | None = None) -> Packed:
    """Write `root` as a deterministic tar.gz at `destination`; members are under `prefix` (default: root's name)."""
    root = root.absolute()
    prefix = root.name if prefix is None else prefix
    with open(destination, "wb") as raw:
        writer = _HashingWriter(raw)
        # filename="" and mtime=0: the gzip header names no file and no time.
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=writer, mtime=0, compresslevel=6) as compressed,
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            if prefix:
                top = tarfile.TarInfo(prefix)
                top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
                tar.addfile(top)
            for path in _entries(root):
                info = _tar_info(root, path, prefix)
                if info.isreg():
                    with open(path, "rb") as source:
                        tar.addfile(info, source)
                else:
                    tar.addfile(info)
        writer.flush()
    return Packed(destination, writer.size, writer.digest.hexdigest())
