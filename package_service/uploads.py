"""Streamed uploads (`PUT .../content`): the body goes to S3 part by part while it arrives, then the
version is committed `pending` and its validation queued (`publishing.commit_version`).

The bytes are accounted for whatever happens: their key is remembered as an orphan before the
first byte moves (made durable at once, and no connection is held while the body streams), a
failed or cancelled upload leaves nothing in S3 (`storage.upload_stream`), and bytes whose commit
fails are deleted (their orphan row goes with the janitor's next sweep). No lock is held while S3
answers: the orphan row commits before the body streams, and a failed commit is rolled back
before its bytes are deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import ClientDisconnect

from common.access import Subject
from common.db import checkpoint
from common.errors import BadRequest, DepotError, PayloadTooLarge
from common.logging import error_fields
from common.naming import Version
from common.resources import Spawn
from common.s3 import S3
from package_service import models as m
from package_service import publishing, schemas, service
from package_service.storage import delete_object, object_key, part_size_for, upload_stream

log = structlog.get_logger(__name__)

_EMPTY = "The body is empty: an artifact has at least one byte."


@dataclass(frozen=True)
class UploadHeaders:
    """What the request's headers say of the body (checked for form by the route)."""

    length: int | None
    sha256: str | None
    filename: str | None
    content_type: str


async def upload_version(
    db: AsyncSession,
    s3: S3,
    caller: Subject,
    *,
    name: str,
    version: Version,
    body: AsyncIterator[bytes],
    headers: UploadHeaders,
    max_bytes: int,
    spawn: Spawn,
) -> schemas.Version:
    """Stream `body` to S3 and commit it as a new `pending` version of `name`."""
    if headers.length is not None and headers.length > max_bytes:
        raise PayloadTooLarge(f"Artifacts may not exceed {max_bytes} bytes.")
    if headers.length == 0:
        raise BadRequest(_EMPTY)
    await publishing.check_publishable(db, caller, name, version)
    version_id = uuid.uuid4()
    key = object_key(version_id)
    await service.remember_orphans(db, [key])
    await checkpoint(db)  # remembered before any byte moves; and no connection is held while the body streams
    try:
        stored = await upload_stream(
            s3, key, body, max_bytes=max_bytes, spawn=spawn, part_size=part_size_for(max_bytes),
            content_type=headers.content_type, expected_sha256=headers.sha256, allow_empty=False,
        )  # fmt: skip
    except BaseException as error:
        # Refused by its own checks (too large, wrong checksum, empty), the upload stored nothing: its
        # key need not wait for the janitor. After any other failure, S3 may hold something: it does.
        await _record_failure(
            db, caller, name, version,
            outcome="aborted" if isinstance(error, ClientDisconnect) else "failed",
            stored_nothing=key if isinstance(error, DepotError) else None,
        )  # fmt: skip
        raise
    try:
        return await publishing.commit_version(
            db, caller, name, version, version_id=version_id, key=key, size=stored.size, sha256=stored.sha256,
            content_type=headers.content_type, filename=headers.filename, mode="stream",
        )  # fmt: skip
    except BaseException:
        await publishing.roll_back(db)  # first: the failed commit's rows hold locks, and S3 is called next
        await _delete_quietly(s3, key)
        raise


async def _record_failure(
    db: AsyncSession, caller: Subject, name: str, version: Version, *, outcome: str, stored_nothing: str | None
) -> None:
    """The failed upload's audit line, durable although the request fails; and the orphan row of
    `stored_nothing`, a key under which nothing was stored, forgotten."""
    try:
        await db.rollback()  # whatever the failure left half done
        if stored_nothing is not None:
            await db.execute(sa.delete(m.orphans).where(m.orphans.c.s3_key == stored_nothing))
        await db.execute(
            sa.insert(m.transfers).values(
                package=name, version=version.text, username=caller.username, direction="upload", mode="stream",
                bytes=0, outcome=outcome,
            )
        )  # fmt: skip
        await checkpoint(db)
    except Exception as error:  # noqa: BLE001 - losing an audit line must not hide the upload's own failure
        log.warning("transfer_record_failed", **error_fields(error))


async def _delete_quietly(s3: S3, key: str) -> None:
    try:
        await delete_object(s3, key)
    except Exception as error:  # noqa: BLE001 - the orphan row is still there: the janitor deletes them later
        log.warning("delete_bytes_failed", key=key, **error_fields(error))
