"""Bytes in and out: streamed uploads, downloads (relayed or redirected), and the removal of bytes.

No bytes are ever held whole: uploads go to S3 part by part as they arrive (`storage`), and
downloads relay S3's body in chunks or send the client to a short-lived presigned URL.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
import structlog
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from common.access import Subject
from common.api import Call, Operation
from common.app import ServiceBound, authenticated
from common.db import transaction
from common.errors import BadRequest, Conflict, PayloadTooLarge
from common.naming import Version
from package_service import models as m
from package_service import publishing, schemas, service
from package_service.settings import PackageSettings
from package_service.storage import DEFAULT_PART_SIZE, delete_object, open_download, upload_stream

log = structlog.get_logger(__name__)

MIB = 1024 * 1024
REDIRECT_SECONDS = 60
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_FILE_NAME = TypeAdapter(schemas.FileName)
_CONTENT_TYPE = TypeAdapter(schemas.ContentType)


def part_size_for(max_bytes: int) -> int:
    """8 MiB parts, larger when needed so that the largest artifact fits in S3's 10,000 parts."""
    needed = -(-max_bytes // 9_000)
    return max(DEFAULT_PART_SIZE, -(-needed // MIB) * MIB)


def object_key(version_id: uuid.UUID) -> str:
    """Where a version's bytes live: built from ids only, never from names a user chose."""
    return f"versions/{version_id}"


def _valid(adapter: TypeAdapter[str], value: str) -> bool:
    # The same rules as the presigned upload's body fields (schemas.FileName, schemas.ContentType).
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _upload_headers(request: Request, limit: int) -> tuple[str | None, str | None, str]:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest("Content-Length must be a number.")
        if int(length) > limit:
            raise PayloadTooLarge(f"Artifacts may not exceed {limit} bytes.")
    checksum = request.headers.get("x-checksum-sha256")
    if checksum is not None and not _SHA256.fullmatch(checksum):
        raise BadRequest("X-Checksum-Sha256 must be 64 hexadecimal characters.")
    filename = request.headers.get("x-filename")
    if filename is not None and not _valid(_FILE_NAME, filename):
        raise BadRequest("X-Filename must be a plain file name (no path, no control characters, 255 at most).")
    content_type = request.headers.get("content-type", "application/octet-stream")
    if not _valid(_CONTENT_TYPE, content_type):
        raise BadRequest("Content-Type is not valid.")
    return checksum, filename, content_type


def _disposition(filename: str) -> str:
    # RFC 6266: a plain ASCII fallback and the exact name, percent-encoded.
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class Transfers(ServiceBound):
    """The transfer operations of the service, and the deletion of bytes after commit."""

    def __init__(self, settings: PackageSettings) -> None:
        self.settings = settings

    async def delete_bytes(self, keys: list[str]) -> None:
        """Delete bytes whose rows are gone; keys whose deletion fails stay orphans, swept later."""
        deleted = []
        for key in keys:
            try:
                await delete_object(self._s3, key)
            except Exception as error:  # noqa: BLE001 - the sweeper retries it
                log.warning("delete_bytes_failed", key=key, error_type=type(error).__name__)
            else:
                deleted.append(key)
        if deleted:
            async with transaction(self._bound.sessions) as db:
                await db.execute(sa.delete(m.orphans).where(m.orphans.c.s3_key.in_(deleted)))

    async def _record(self, **values: Any) -> None:
        # Its own short transaction: the request it describes may have failed.
        try:
            async with transaction(self._bound.sessions) as db:
                await db.execute(sa.insert(m.transfers).values(**values))
        except Exception as error:  # noqa: BLE001 - losing an audit line must not fail the transfer
            log.warning("transfer_record_failed", error_type=type(error).__name__)

    async def put_content(self, call: Call[None, None]) -> schemas.Version:
        """Stream the body to S3 while it arrives, then commit the version as `pending`."""
        subject = Subject.of(await authenticated(call))
        name, version = call.path("name"), Version.parse(call.path("version"))
        checksum, filename, content_type = _upload_headers(call.request, self.settings.max_artifact_bytes)
        db = call.db
        await publishing.check_publishable(db, subject, name, version)
        version_id = uuid.uuid4()
        key = object_key(version_id)
        # Remembered before any byte is sent: whatever happens next, these bytes cannot be lost track of.
        await service.remember_orphans(db, [key])
        await db.commit()  # no connection is held while the body streams
        try:
            stored = await upload_stream(
                self._s3,
                key,
                call.request.stream(),
                max_bytes=self.settings.max_artifact_bytes,
                part_size=part_size_for(self.settings.max_artifact_bytes),
                content_type=content_type,
                expected_sha256=checksum,
            )
        except BaseException:
            await self._record(
                package=name, version=version.text, username=subject.username, direction="upload",
                mode="stream", bytes=0, outcome="failed",
            )  # fmt: skip
            raise
        try:
            return await publishing.commit_version(
                db, subject, name, version, version_id=version_id, key=key, size=stored.size,
                sha256=stored.sha256, content_type=content_type, filename=filename, mode="stream",
            )  # fmt: skip
        except BaseException:
            await self.delete_bytes([key])
            raise

    async def get_content(self, call: Call[None, schemas.DownloadQuery]) -> Response:
        """The bytes of a version: relayed (with ranges) or by redirect to a presigned URL."""
        subject = Subject.of(await authenticated(call))
        db = call.db
        package = await service.require_package(db, subject, call.path("name"))
        row = await service.find_version(db, package, call.path("version"))
        if row.status in {"pending", "rejected"} and not subject.is_admin:
            raise Conflict(f"This version is {row.status}; it cannot be downloaded yet.")
        etag = f'"{row.sha256}"'
        filename = row.filename or f"{package.name}-{row.version}"
        headers = {"ETag": etag, "X-Checksum-Sha256": row.sha256, "Content-Disposition": _disposition(filename)}
        if_none_match = call.request.headers.get("if-none-match")
        if if_none_match is not None and (if_none_match.strip() == "*" or etag in if_none_match):
            return Response(status_code=304, headers={"ETag": etag})
        await db.execute(
            sa.update(m.versions)
            .where(m.versions.c.id == row.id)
            .values(download_count=m.versions.c.download_count + 1)
        )
        await db.execute(
            sa.update(m.packages)
            .where(m.packages.c.id == package.id)
            .values(download_count=m.packages.c.download_count + 1)
        )
        audit = {
            "package": package.name, "package_id": package.id, "version_id": row.id, "version": row.version,
            "username": subject.username,
        }  # fmt: skip
        if call.query.redirect:
            url = await self._s3.presigner.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self._s3.bucket, "Key": row.s3_key, "ResponseContentType": row.content_type,
                    "ResponseContentDisposition": headers["Content-Disposition"],
                },
                ExpiresIn=REDIRECT_SECONDS,
            )  # fmt: skip
            await db.execute(
                sa.insert(m.transfers).values(
                    **audit, direction="download", mode="redirect", bytes=row.size, outcome="ok"
                )
            )
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
        download = await open_download(self._s3, row.s3_key, row.size, call.request.headers.get("range"))
        return StreamingResponse(
            self._relay(download.body, download.close, audit),
            status_code=download.status,
            headers={**headers, **download.headers},
            media_type=row.content_type,
        )

    async def _relay(self, body: AsyncIterator[bytes], close: Any, audit: dict[str, Any]) -> AsyncIterator[bytes]:
        sent, outcome = 0, "aborted"
        try:
            async for chunk in body:
                yield chunk
                sent += len(chunk)
            outcome = "ok"
        finally:
            try:
                await asyncio.shield(close())
            except Exception as error:  # noqa: BLE001 - the connection is dropped either way
                log.warning("download_close_failed", error_type=type(error).__name__)
            # Recorded whatever happened: a client that went away mid-download is worth knowing about.
            record = self._record(**audit, direction="download", mode="stream", bytes=sent, outcome=outcome)
            task = asyncio.ensure_future(record)
            _background.add(task)
            task.add_done_callback(_background.discard)

    def operations(self) -> list[Operation]:
        """The transfer operations, for the service's route table."""
        content = "/{name}/versions/{version}/content"
        return [
            Operation("PUT", content, self.put_content, "Upload a version's bytes (streamed); it becomes pending.",
                      raw_body_media_type="application/octet-stream", response=schemas.Version, status_code=201,
                      errors=(400, 401, 403, 404, 409, 413), tags=("transfers",)),
            Operation("GET", content, self.get_content, "Download a version's bytes (Range, If-None-Match, redirect).",
                      query=schemas.DownloadQuery, response_media_type="application/octet-stream",
                      errors=(401, 404, 409, 416), tags=("transfers",)),
        ]  # fmt: skip


_background: set[asyncio.Future[None]] = set()
