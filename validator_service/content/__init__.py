"""Content validation: what each check looks at, and what it concludes, for one stored artifact.

Everything here is synchronous and pure of I/O except through the file object it is given, a
seekable binary file (in the service, reads of the S3 object by range, see `source.py`; in tests,
`io.BytesIO`). A check never loads a pickle, never extracts to disk, and reads a bounded amount at
a time, so memory stays bounded whatever the artifact's size.

Errors: the file object raises `StorageError` when the bytes cannot be read (S3 down, ...). That is
not a property of the content: checks must let it propagate (never catch it), so that the job is
retried and reported `error`, never turned into a verdict. Malformed content is a `fail` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

CheckStatus = Literal["pass", "fail", "warn", "skip"]
PicklePolicy = Literal["reject", "warn", "allow"]

GiB = 1024**3


class StorageError(Exception):
    """The artifact's bytes could not be read: a reason to retry, never a verdict on the content."""


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: its `id`, `status` and a short human `detail`."""

    id: str
    status: CheckStatus
    detail: str


@dataclass(frozen=True)
class Rules:
    """The admission rules the checks apply (API.md: Rules)."""

    max_artifact_bytes: int = 10 * GiB
    max_unpacked_bytes: int = 10 * GiB
    max_entries: int = 100_000
    max_compression_ratio: float = 100.0
    pickle_policy: PicklePolicy = "reject"
    allowed_licenses: tuple[str, ...] = ()


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads(..., object_pairs_hook=unique_keys)`: a key given twice is refused (`ValueError`).

    Two readers of the same document could otherwise take different values for it.
    """
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result
