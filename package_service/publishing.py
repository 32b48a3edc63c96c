"""Publishing a version: the checks before bytes move, and the one transaction that makes it exist.

Both ways of uploading (streamed through the service, presigned straight to S3) end here, so a
version is always committed the same way: its string spent for good, its row `pending`, its
validation job queued, and its upload recorded, all in one transaction.
"""

from __future__ import annotations

import uuid
from typing import Literal

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from common.access import Subject, enforce
from common.contracts import ValidationJob, send
from common.errors import Conflict
from common.logging import error_fields
from common.naming import Version, normalize_name
from package_service import models as m
from package_service import schemas, service

log = structlog.get_logger(__name__)


def _spent(version: Version) -> Conflict:
    return Conflict(f"Version {version.identity} of this package exists or was used before.")


async def check_publishable(db: AsyncSession, subject: Subject, name: str, version: Version) -> None:
    """Refuse early (before any byte moves) what the final commit would refuse."""
    package = await service.find_package(db, name)
    if package is not None:
        enforce(subject, service.access_of(package), "write")
    else:
        await service.refuse_reserved_name(db, subject, name)
    spent = await db.execute(
        sa.select(m.spent_versions.c.version_key).where(
            m.spent_versions.c.normalized_name == normalize_name(name),
            m.spent_versions.c.version_key == version.identity,
        )
    )
    if spent.first() is not None:
        raise _spent(version)
    if package is not None:
        open_upload = await db.execute(
            sa.select(m.uploads.c.id).where(
                m.uploads.c.package_id == package.id,
                m.uploads.c.version_key == version.identity,
                m.uploads.c.expires_at > sa.func.now(),
            )
        )
        if open_upload.first() is not None:
            raise Conflict(f"An upload of version {version.identity} is in progress.")


async def commit_version(
    db: AsyncSession,
    subject: Subject,
    name: str,
    version: Version,
    *,
    version_id: uuid.UUID,
    key: str,
    size: int,
    sha256: str,
    content_type: str,
    filename: str | None,
    mode: Literal["stream", "presigned"],
    upload_id: uuid.UUID | None = None,
) -> schemas.Version:
    """Make the version exist as `pending` and queue its validation, in the caller's transaction.

    Two publishers racing for one version both get here; the primary key of the spent version
    strings lets exactly one through.
    """
    package_id = await service.package_for_upload(db, subject, name)
    claimed = await db.execute(
        insert(m.spent_versions)
        .values(normalized_name=normalize_name(name), version_key=version.identity)
        .on_conflict_do_nothing()
        .returning(m.spent_versions.c.version_key)
    )
    if claimed.first() is None:
        raise _spent(version)
    other_upload = sa.select(m.uploads.c.id).where(
        m.uploads.c.package_id == package_id, m.uploads.c.version_key == version.identity
    )
    if upload_id is not None:
        other_upload = other_upload.where(m.uploads.c.id != upload_id)
    if (await db.execute(other_upload)).first() is not None:
        raise Conflict(f"An upload of version {version.identity} is in progress.")
    await db.execute(
        sa.insert(m.versions).values(
            id=version_id, package_id=package_id, version=version.text, version_key=version.identity,
            sort_key=version.sort_key, prerelease=version.is_prerelease, status="pending", size=size,
            sha256=sha256.lower(), content_type=content_type, filename=filename, uploaded_by=subject.username,
            s3_key=key,
        )
    )  # fmt: skip
    # The orphan row written before the bytes moved must still be there, and no sweep may have
    # started on it: if the janitor took it (an upload slower than the orphan grace period), the
    # bytes may be gone.
    kept = await db.execute(
        sa.delete(m.orphans)
        .where(m.orphans.c.s3_key == key, m.orphans.c.sweep_started_at.is_(None))
        .returning(m.orphans.c.s3_key)
    )
    if kept.first() is None:
        raise Conflict("The upload took longer than the service keeps unfinished uploads; upload again.")
    if upload_id is not None:
        await db.execute(sa.delete(m.uploads).where(m.uploads.c.id == upload_id))
    await db.execute(sa.update(m.packages).where(m.packages.c.id == package_id).values(updated_at=sa.func.now()))
    await db.execute(
        sa.insert(m.transfers).values(
            package=name, package_id=package_id, version_id=version_id, version=version.text,
            username=subject.username, direction="upload", mode=mode, bytes=size, outcome="ok",
        )
    )  # fmt: skip
    package = await service.find_package(db, name)
    if package is None:  # created or found above, in this very transaction
        raise Conflict("The package changed while publishing; try again.")
    job = ValidationJob(
        version_id=version_id,
        package=package.name,
        version=version.text,
        s3_key=key,
        sha256=sha256,
        size=size,
        filename=filename,
    )
    await send(db, job)
    row = await service.find_version(db, package, version.identity)
    return service.version_view(row, package.name)


async def roll_back(db: AsyncSession) -> None:
    """Roll back what a failed publish left uncommitted (its rows hold locks), before S3 is asked to
    undo the bytes: no lock is ever held while S3 answers."""
    try:
        await db.rollback()
    except Exception as error:  # noqa: BLE001 - a connection that failed holds no lock either
        log.warning("rollback_failed", **error_fields(error))
