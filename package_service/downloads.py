"""Downloads (`GET .../content`): who may, what is counted, and the bytes relayed or redirected to.

A download is decided against the version's row (read, never locked), then the read's transaction
ends, so that none (nor its connection) is held while S3 answers; the bytes are opened in S3 (or a
presigned URL made), and only then is the download counted, in a short transaction of its own. A
relayed download's audit line is written when the relay ends, however it ends (`record_relay`),
by a task the app owns. `HEAD`, `304` and `416` answers are neither counted nor recorded, and a
`HEAD` asks nothing of S3.

No browser renders a download: it is sent as an attachment, with `nosniff`, a sandboxing content
security policy, and the stored content type only when browsers do not run or render it as a
document (`served_content_type`); the presigned redirect asks S3 for the same type and disposition.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.access import Subject, decide_download
from common.db import checkpoint, transaction
from common.errors import Conflict
from common.logging import error_fields
from common.s3 import S3
from package_service import models as m
from package_service import service
from package_service.storage import ObjectStream, open_download, range_headers

log = structlog.get_logger(__name__)

REDIRECT_SECONDS = 60
OCTET_STREAM = "application/octet-stream"

# `type/subtype` as RFC 6838 allows them: anything else is not a type a browser should be trusted with.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
# Whole top-level types that browsers render as documents (text/plain excepted, below).
_RENDERED_TYPES = frozenset({"text", "multipart", "message"})
# Parts of a subtype that browsers run or render as documents: HTML and XHTML, XML and its dialects
# (SVG, XSLT, MathML, RSS, ...), every kind of script, PDF, Flash. Broad on purpose: a harmless type
# sent as octet-stream costs nothing, a rendered one is a hole.
_RENDERED_SUBTYPE_PARTS = ("html", "xml", "svg", "xsl", "script", "ecma", "pdf", "flash", "shockwave")


def served_content_type(stored: str) -> str:
    """The type a download is sent with: the stored one's `type/subtype` if browsers do not run or
    render it, else `application/octet-stream`. Parameters (`; charset=...`) are dropped."""
    essence = stored.split(";", 1)[0].strip().lower()
    if _MEDIA_TYPE.fullmatch(essence) is None:
        return OCTET_STREAM
    if essence == "text/plain":
        return essence
    top, _, subtype = essence.partition("/")
    if top in _RENDERED_TYPES or any(part in subtype for part in _RENDERED_SUBTYPE_PARTS):
        return OCTET_STREAM
    return essence


def _never_rendered(filename: str) -> dict[str, str]:
    """The headers that keep a browser from rendering or sniffing what it downloads."""
    return {
        "Content-Disposition": _disposition(filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }


@dataclass
class Download:
    """What to answer: a status and headers, then S3's body to relay, a URL to redirect to, or nothing (`304`)."""

    status: int
    headers: dict[str, str]
    media_type: str | None = None
    stream: ObjectStream | None = None
    location: str | None = None
    audit: dict[str, Any] = field(default_factory=dict)


def _disposition(filename: str) -> str:
    # RFC 6266: a plain ASCII fallback and the exact name, percent-encoded.
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def download(
    db: AsyncSession,
    s3: S3,
    caller: Subject,
    *,
    name: str,
    version: str,
    range_header: str | None,
    if_none_match: str | None,
    redirect: bool,
    head: bool = False,
) -> Download:
    """The bytes of a version for `caller`: relayed (with a range), or by redirect to a presigned URL.

    With `head`, what a `GET` would answer without its body (a `200` or `206`, never a redirect:
    its URL would be a download nobody counted): S3 is not asked and nothing is counted.
    """
    package = await service.require_package(db, caller, name)
    row = await service.find_version(db, package, version)
    if not decide_download(caller, service.access_of(package), row.status).allowed:  # the one rule, shared
        raise Conflict(f"This version is {row.status}; it cannot be downloaded yet.")
    etag = f'"{row.sha256}"'
    filename = row.filename or f"{package.name}-{row.version}"
    never_rendered = _never_rendered(filename)
    headers = {"ETag": etag, "X-Checksum-Sha256": row.sha256, **never_rendered}
    content_type = served_content_type(row.content_type)
    if if_none_match is not None and (if_none_match.strip() == "*" or etag in if_none_match):
        return Download(status=304, headers={"ETag": etag, **never_rendered})
    if head:
        status, described, _ = range_headers(row.size, range_header)
        return Download(status=status, headers={**headers, **described}, media_type=content_type)
    audit = {
        "package": package.name, "package_id": package.id, "version_id": row.id, "version": row.version,
        "username": caller.username,
    }  # fmt: skip
    await checkpoint(db)
    if redirect:
        url = await s3.presigner.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": s3.bucket, "Key": row.s3_key, "ResponseContentType": content_type,
                "ResponseContentDisposition": never_rendered["Content-Disposition"],
            },
            ExpiresIn=REDIRECT_SECONDS,
        )  # fmt: skip
        await _count(db, package.id, row.id)
        await db.execute(
            sa.insert(m.transfers).values(**audit, direction="download", mode="redirect", bytes=row.size, outcome="ok")
        )
        return Download(status=307, headers={"Cache-Control": "no-store", **never_rendered}, location=url)
    opened = await open_download(s3, row.s3_key, row.size, range_header)
    await _count(db, package.id, row.id)
    return Download(
        status=opened.status, headers={**headers, **opened.headers}, media_type=content_type, stream=opened,
        audit=audit,
    )  # fmt: skip


async def _count(db: AsyncSession, package_id: Any, version_id: Any) -> None:
    # After S3 has answered: the rows are locked only for the rest of this short transaction.
    await db.execute(
        sa.update(m.versions)
        .where(m.versions.c.id == version_id)
        .values(download_count=m.versions.c.download_count + 1)
    )
    await db.execute(
        sa.update(m.packages)
        .where(m.packages.c.id == package_id)
        .values(download_count=m.packages.c.download_count + 1)
    )


async def relay(stream: ObjectStream, on_end: Callable[[int, str], None]) -> AsyncIterator[bytes]:
    """S3's body, passed on chunk by chunk; `on_end(bytes sent, outcome)` when it ends, however it ends."""
    sent, outcome = 0, "aborted"
    try:
        async for chunk in stream.body:
            yield chunk
            sent += len(chunk)
        outcome = "ok"
    finally:
        try:
            await stream.close()
        except Exception as error:  # noqa: BLE001 - the connection is dropped either way
            log.warning("download_close_failed", **error_fields(error))
        on_end(sent, outcome)


async def record_relay(
    sessions: async_sessionmaker[AsyncSession], audit: dict[str, Any], sent: int, outcome: str
) -> None:
    """The audit line of a relayed download, in a transaction of its own (the request's is over)."""
    async with transaction(sessions) as db:
        await db.execute(
            sa.insert(m.transfers).values(**audit, direction="download", mode="stream", bytes=sent, outcome=outcome)
        )
