"""How a file is cut for transfer: parts of a multipart upload, ranges of a download."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (but the last)
MAX_PARTS = 10_000  # S3's most parts in one upload
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_THRESHOLD = 64 * MiB  # files this large or larger use the presigned multipart upload / ranges
DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True)
class Piece:
    """One part or range: its number (from 1), first byte and length."""

    number: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        """The last byte's offset (inclusive, as in a `Range` header)."""
        return self.offset + self.size - 1


def part_size_for(size: int, wanted: int = DEFAULT_PART_SIZE) -> int:
    """`wanted` (at least S3's minimum), grown in whole MiB until `size` fits in S3's part count."""
    part_size = max(wanted, MIN_PART_SIZE)
    if -(-size // part_size) > MAX_PARTS:
        needed = -(-size // MAX_PARTS)
        part_size = -(-needed // MiB) * MiB
    return part_size


def plan(size: int, piece_size: int) -> list[Piece]:
    """`size` bytes cut into pieces of `piece_size` (the last one smaller); one piece for an empty file."""
    if piece_size < 1:
        raise ValueError("piece_size must be positive")
    if size <= 0:
        return [Piece(1, 0, 0)]
    return [
        Piece(number, offset, min(piece_size, size - offset))
        for number, offset in enumerate(range(0, size, piece_size), start=1)
    ]
