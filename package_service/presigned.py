"""Presigned uploads: the client sends a version's bytes straight to S3, part by part.

The service opens an S3 multipart upload and hands out one presigned `UploadPart` URL per part;
the client `PUT`s each part there, keeps the ETags, and completes. No byte passes through the
service. A row in `uploads` tracks each open upload (one per version); its S3 key is built from
the upload id, which becomes the version id on completion, so the bytes never move. The artifact's
sha256 is declared when the upload starts or when it completes (a client may hash while it sends,
reading a large file once); the version gets it, and validation checks it.

Whatever happens, the bytes are accounted for: the key is remembered as an orphan from the start
(until `publishing.commit_version` takes it over), an aborted or expired upload is aborted in S3
and its key's object deleted, and an upload not completed by `expires_at` is aborted by
`abort_expired` (the janitor) or by the first request that finds it expired.

Concurrency: no row lock, indeed no transaction, is held while S3 answers, so a slow or hung S3
delays only the request that waits on it. Each flow takes the upload in short transactions around
its S3 calls:

- Completing: a first transaction locks the row, checks the body (parts, sha256) and that no other
  request is completing the upload, and claims it: `claimed_at` is set and committed. S3 then
  assembles the parts, with no transaction open. A last transaction locks the row again and commits
  the version only if the row still carries this very claim (`publishing.commit_version` deletes
  the row). A request that fails after claiming gives the claim back; one that crashes leaves it,
  and a claim older than `CLAIM_SECONDS` (longer than any request may last) counts as abandoned:
  the upload can then be completed again (S3 tells whether the crashed request had assembled the
  parts), aborted, or expire.
- Discarding (an abort, an expiry, a completion whose parts add up to the wrong size): the row is
  deleted and the outcome recorded, and that commits; then S3 aborts the multipart upload and any
  object is deleted; then the key's orphan row is forgotten. Until that last step the janitor
  would sweep the key, so a failure or a crash in between leaks nothing.
- Starting: the checks are made, then S3 opens the multipart upload, and only then does a short
  transaction create the package if need be and insert the row (if it fails, it is rolled back
  before the multipart upload is aborted). An expired upload of the same version is forgotten in
  that transaction and discarded in S3 after it.

So of two racing completions, a completion and an abort, or an abort and the janitor, the one
whose first transaction commits first wins; the others find a live claim (`409`) or no row (`404`).
The janitor skips claimed rows and rows that a request holds.

These are flows: they take the request's session, the S3 clients and the caller, never HTTP.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from botocore.exceptions import ClientError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.access import Subject
from common.db import checkpoint, transaction
from common.errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge
from common.logging import error_fields
from common.naming import Version
from common.resources import Spawn
from common.s3 import MAX_PARTS, MISSING_OBJECT_CODES, S3, error_code
from package_service import models as m
from package_service import publishing, schemas, service
from package_service.storage import abort_multipart_upload, delete_object, object_key, part_size_for

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = structlog.get_logger(__name__)

PART_URL_SECONDS = 3600
"""Lifetime of a part URL (never past the upload's expiry); `GET` on the upload gives fresh ones."""
EXPIRED_BATCH = 1000
"""Most expired uploads one `abort_expired` run handles."""
CLAIM_SECONDS = 600
"""Age after which a completion's claim counts as abandoned (its request crashed): longer than any
request may last (`request_timeout_seconds` is at most 300)."""

NO_SUCH_UPLOAD = "No such upload."
_EXPIRED = "No such upload: it expired."
_BEING_COMPLETED = "This upload is being completed by another request; try again shortly."
# S3's answers to a completion whose parts are wrong: the client's to fix, and the upload stays open.
_PART_ERRORS = frozenset({"InvalidPart", "InvalidPartOrder", "EntityTooSmall"})


@dataclass(frozen=True)
class _Part:
    number: int
    etag: str
    size: int


def part_sizes(size: int, part_size: int) -> list[int]:
    """The size of each part of a `size`-byte artifact cut in `part_size` parts (the last one smaller)."""
    count = -(-size // part_size)
    return [part_size] * (count - 1) + [size - part_size * (count - 1)]


def _bare(etag: str) -> str:
    return etag.strip().strip('"')


def _numbers(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:10])
    return shown + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")


# Flows


async def start_upload(
    db: AsyncSession,
    s3: S3,
    caller: Subject,
    *,
    name: str,
    version: Version,
    body: schemas.CreateUpload,
    max_bytes: int,
    expiry_hours: int,
    spawn: Spawn,
) -> schemas.Upload:
    """Open a multipart upload for a new version and hand out a presigned URL per part."""
    if body.size > max_bytes:
        raise PayloadTooLarge(f"Artifacts may not exceed {max_bytes} bytes.")
    part_size = body.part_size or part_size_for(body.size)
    if -(-body.size // part_size) > MAX_PARTS:
        raise BadRequest(f"With parts of {part_size} bytes, this artifact needs more than {MAX_PARTS} parts.")
    await publishing.check_publishable(db, caller, name, version)
    await checkpoint(db)  # the checks only read: no transaction is open while S3 answers

    upload_id = uuid.uuid4()  # also the version's id once completed, so that the key stays right
    key = object_key(upload_id)
    created = await s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key, ContentType=body.content_type)
    s3_upload_id = created["UploadId"]
    try:
        package = await _package_for_upload(db, caller, name)
        replaced = await _take_expired_upload(db, package, version)
        row = await _insert_upload(
            db, upload_id=upload_id, package_id=package.id, version=version, key=key, s3_upload_id=s3_upload_id,
            body=body, part_size=part_size, created_by=caller.username, expiry_hours=expiry_hours,
        )  # fmt: skip
        # Until the version is committed, these bytes belong to no version: remembered so they are swept.
        await service.remember_orphans(db, [key])
        await checkpoint(db)  # here, so that a failed commit still aborts the multipart upload below
    except BaseException:
        await publishing.roll_back(db)  # first: what the failure left uncommitted holds locks
        # Shielded: if the request is cancelled again while waiting, the abort goes on without it.
        await asyncio.shield(spawn(_abort_quietly(s3, key, s3_upload_id), "presigned_upload_abort"))
        raise
    if replaced is not None:
        await _discard_in_s3(db, s3, replaced)
    return await _view(s3, row, package.name, completed=[])


async def get_upload(
    db: AsyncSession, s3: S3, caller: Subject, *, name: str, version: str, upload_id: str
) -> schemas.Upload:
    """An open upload, with fresh part URLs and the parts S3 already holds (to resume)."""
    package, row = await _find(db, caller, name, version, upload_id, lock=False)
    if row.expired:
        raise NotFound(_EXPIRED)  # aborted by the janitor, or by the next completion or abort
    await checkpoint(db)  # read: no transaction (and no connection) is held while S3 answers
    try:
        completed = await _list_parts(s3, row)
    except ClientError as error:
        if error_code(error) == "NoSuchUpload":
            raise NotFound(NO_SUCH_UPLOAD) from None
        raise
    return await _view(s3, row, package.name, completed)


async def complete_upload(
    db: AsyncSession, s3: S3, caller: Subject, *, name: str, version: str, upload_id: str, body: schemas.CompleteUpload
) -> schemas.Version:
    """Assemble the uploaded parts and commit the version as `pending` (the steps: see the module)."""
    package, row = await _find(db, caller, name, version, upload_id, lock=True)
    if row.claimed:
        raise Conflict(_BEING_COMPLETED)
    if row.expired:
        await _discard(db, s3, row, package.name, "expired")
        raise NotFound(_EXPIRED)
    # Checked before anything changes: a wrong body leaves the upload as it was, to complete again.
    given = _check_parts(row, body.parts)
    sha256 = _declared_sha256(row.sha256, body.sha256)
    claim = await _claim(db, row.id)
    try:
        stored = await _assemble(s3, row, given)
    except BaseException:
        await _give_back(db, row.id, claim)
        raise
    if stored is None or stored != row.size:
        # No object: the multipart upload was aborted meanwhile (its row is gone then, with its package).
        discarded = await _discard(db, s3, row, package.name, "failed", stored=stored or 0, claim=claim)
        if stored is None or not discarded:
            raise NotFound(NO_SUCH_UPLOAD)
        raise BadRequest(f"The parts add up to {stored} bytes, not the {row.size} declared; the upload is discarded.")
    try:
        await _hold_claim(db, row.id, claim)
        # If the commit fails, the bytes stay under their key and the row stays: completing again
        # commits them, and aborting (or expiry) deletes them.
        return await publishing.commit_version(
            db, caller, name, Version.parse(row.version), version_id=row.id, key=row.s3_key,
            size=row.size, sha256=sha256, content_type=row.content_type, filename=row.filename,
            mode="presigned", upload_id=row.id,
        )  # fmt: skip
    except BaseException:
        await _give_back(db, row.id, claim)
        raise


async def abort_upload(db: AsyncSession, s3: S3, caller: Subject, *, name: str, version: str, upload_id: str) -> None:
    """Abort an upload: S3 drops its parts, and the version may be uploaded afresh."""
    package, row = await _find(db, caller, name, version, upload_id, lock=True)
    if row.claimed:
        raise Conflict(_BEING_COMPLETED)
    await _discard(db, s3, row, package.name, "expired" if row.expired else "aborted")
    if row.expired:
        raise NotFound(_EXPIRED)


# The janitor


async def abort_expired(sessions: async_sessionmaker[AsyncSession], s3: S3, limit: int = EXPIRED_BATCH) -> int:
    """Abort uploads past their expiry in S3 and delete their rows; returns how many.

    Each upload on its own (a transaction that forgets it, then S3, then one that forgets its key),
    so that one failure (logged, retried on the next run) does not hold back the others; uploads
    that a request is completing or holds right now are skipped.
    """
    async with transaction(sessions) as db:
        due = list(
            (
                await db.execute(
                    sa.select(m.uploads.c.id)
                    .where(m.uploads.c.expires_at <= sa.func.now(), ~_claimed())
                    .order_by(m.uploads.c.expires_at)
                    .limit(limit)
                )
            ).scalars()
        )
    aborted = 0
    for upload_id in due:
        try:
            async with transaction(sessions) as db:
                found = await db.execute(
                    sa.select(m.uploads, m.packages.c.name.label("package_name"))
                    .join(m.packages, m.packages.c.id == m.uploads.c.package_id)
                    .where(m.uploads.c.id == upload_id, m.uploads.c.expires_at <= sa.func.now(), ~_claimed())
                    .with_for_update(of=m.uploads, skip_locked=True)
                )
                row = found.first()
                if row is None:
                    continue  # completed, aborted or being worked on meanwhile
                await _forget(db, row, row.package_name, "expired")
            async with transaction(sessions) as db:
                await _discard_in_s3(db, s3, row)
        except Exception as error:  # noqa: BLE001 - the next run retries it
            log.warning("abort_expired_upload_failed", upload_id=str(upload_id), **error_fields(error))
            continue
        aborted += 1
    if aborted:
        log.info("expired_uploads_aborted", count=aborted)
    return aborted


# Helpers


def _claimed() -> sa.ColumnElement[bool]:
    """Whether an upload's row carries a live claim: a completion is under way."""
    claimed_at = m.uploads.c.claimed_at
    return sa.and_(claimed_at.is_not(None), claimed_at > sa.func.now() - timedelta(seconds=CLAIM_SECONDS))


def _upload_query() -> sa.Select[Any]:
    """An upload's row, with whether it expired and whether it is claimed."""
    return sa.select(
        m.uploads,
        (m.uploads.c.expires_at <= sa.func.now()).label("expired"),
        _claimed().label("claimed"),
    )


async def _package_for_upload(db: AsyncSession, caller: Subject, name: str) -> sa.Row[Any]:
    """The package a version is uploaded to, created (owned by the caller) if need be."""
    await service.package_for_upload(db, caller, name)
    package = await service.find_package(db, name)
    if package is None:  # created or found above, in this very transaction
        raise Conflict("The package changed while publishing; try again.")
    return package


async def _insert_upload(
    db: AsyncSession,
    *,
    upload_id: uuid.UUID,
    package_id: uuid.UUID,
    version: Version,
    key: str,
    s3_upload_id: str,
    body: schemas.CreateUpload,
    part_size: int,
    created_by: str,
    expiry_hours: int,
) -> sa.Row[Any]:
    inserted = await db.execute(
        insert(m.uploads)
        .values(
            id=upload_id, package_id=package_id, version=version.text, version_key=version.identity, s3_key=key,
            s3_upload_id=s3_upload_id, size=body.size, sha256=_lower(body.sha256), part_size=part_size,
            content_type=body.content_type, filename=body.filename, created_by=created_by,
            expires_at=sa.func.now() + timedelta(hours=expiry_hours),
        )
        .on_conflict_do_nothing()  # another request opened one for this version meanwhile
        .returning(m.uploads)
    )  # fmt: skip
    row: sa.Row[Any] | None = inserted.first()
    if row is None:
        raise Conflict(f"An upload of version {version.identity} is in progress; complete or abort it first.")
    return row


async def _take_expired_upload(db: AsyncSession, package: sa.Row[Any], version: Version) -> sa.Row[Any] | None:
    """`409` while an upload of this version is open. One that expired is forgotten in the caller's
    transaction and returned, to be discarded in S3 once that transaction has committed."""
    found = await db.execute(
        _upload_query()
        .where(m.uploads.c.package_id == package.id, m.uploads.c.version_key == version.identity)
        .with_for_update(of=m.uploads)
    )
    row: sa.Row[Any] | None = found.first()
    if row is None:
        return None
    if not row.expired or row.claimed:
        raise Conflict(f"An upload of version {version.identity} is in progress; complete or abort it first.")
    await _forget(db, row, package.name, "expired")
    return row


async def _find(
    db: AsyncSession, subject: Subject, name: str, version: str, upload_id: str, *, lock: bool
) -> tuple[sa.Row[Any], sa.Row[Any]]:
    """The package and the upload named, if the subject may see that upload.

    `404` for a package the subject may not read or an unknown upload; `403` for someone who
    may read the package but is neither the uploader nor one of its writers.
    """
    package = await service.require_package(db, subject, name)
    try:
        upload_uuid = uuid.UUID(upload_id)
        identity = Version.parse(version).identity
    except (ValueError, BadRequest):
        raise NotFound(NO_SUCH_UPLOAD) from None
    query = _upload_query().where(
        m.uploads.c.id == upload_uuid,
        m.uploads.c.package_id == package.id,
        m.uploads.c.version_key == identity,
    )
    row = (await db.execute(query.with_for_update(of=m.uploads) if lock else query)).first()
    if row is None:
        raise NotFound(NO_SUCH_UPLOAD)
    if row.created_by != subject.username and not service.may(subject, package, "write"):
        raise Forbidden("Only the uploader, the package's writers or an admin may see or change this upload.")
    return package, row


async def _claim(db: AsyncSession, upload_id: uuid.UUID) -> datetime:
    """Mark the (locked) upload as being completed, and commit: S3 is called with no lock held.

    The claim is the time it was made (`clock_timestamp`, so two claims never share it): the
    completion commits the version only if the row still carries it.
    """
    claimed = await db.execute(
        sa.update(m.uploads)
        .where(m.uploads.c.id == upload_id)
        .values(claimed_at=sa.func.clock_timestamp())
        .returning(m.uploads.c.claimed_at)
    )
    claim: datetime = claimed.scalar_one()
    await checkpoint(db)
    return claim


async def _hold_claim(db: AsyncSession, upload_id: uuid.UUID, claim: datetime) -> None:
    """Lock the upload's row for the commit of its version, if it still carries `claim`.

    `404` when the row is gone (its package was deleted, or an abort took over an abandoned claim);
    `409` when another completion took the claim over.
    """
    found = await db.execute(sa.select(m.uploads.c.claimed_at).where(m.uploads.c.id == upload_id).with_for_update())
    current = found.first()
    if current is None:
        raise NotFound(NO_SUCH_UPLOAD)
    if current.claimed_at != claim:
        raise Conflict(_BEING_COMPLETED)


async def _give_back(db: AsyncSession, upload_id: uuid.UUID, claim: datetime) -> None:
    """After a failure, release the claim so that the upload can be completed again or aborted at once.

    If this fails too, the claim lapses after `CLAIM_SECONDS`.
    """
    try:
        await db.rollback()  # what the failure left half done
        await db.execute(
            sa.update(m.uploads)
            .where(m.uploads.c.id == upload_id, m.uploads.c.claimed_at == claim)
            .values(claimed_at=None)
        )
        await checkpoint(db)
    except Exception as error:  # noqa: BLE001 - the request's own failure is what the caller must see
        log.warning("upload_claim_release_failed", upload_id=str(upload_id), **error_fields(error))


async def _assemble(s3: S3, row: sa.Row[Any], given: list[tuple[int, str]]) -> int | None:
    """Have S3 assemble the parts into the key's object; its size, or None if there is none.

    `400` for parts that S3 refuses (the upload stays open). A multipart upload that S3 no longer
    knows was assembled before (by a completion that failed or crashed after) or aborted: the object
    tells which.
    """
    try:
        completed: list[CompletedPartTypeDef] = [{"PartNumber": n, "ETag": etag} for n, etag in given]
        await s3.client.complete_multipart_upload(
            Bucket=s3.bucket, Key=row.s3_key, UploadId=row.s3_upload_id, MultipartUpload={"Parts": completed}
        )
    except ClientError as error:
        code = error_code(error)
        if code in _PART_ERRORS:
            raise BadRequest(await _parts_problem(s3, row, given)) from None
        if code != "NoSuchUpload":
            raise
    return await _stored_size(s3, row.s3_key)


def _check_parts(row: sa.Row[Any], parts: Sequence[schemas.PartETag]) -> list[tuple[int, str]]:
    """The body's parts in order, if they name each part of the upload exactly once."""
    expected = len(part_sizes(row.size, row.part_size))
    seen: dict[int, str] = {}
    for part in parts:
        if part.part_number in seen:
            raise BadRequest(f"Part {part.part_number} is listed more than once.")
        seen[part.part_number] = part.etag
    beyond = sorted(n for n in seen if n > expected)
    if beyond:
        raise BadRequest(f"This upload has {expected} parts; there is no part {_numbers(beyond)}.")
    missing = [n for n in range(1, expected + 1) if n not in seen]
    if missing:
        raise BadRequest(
            f"Parts missing: {_numbers(missing)}. List every part ({expected}) with the ETag of its upload."
        )
    return sorted(seen.items())


def _lower(sha256: str | None) -> str | None:
    return sha256.lower() if sha256 is not None else None


def _declared_sha256(at_start: str | None, at_completion: str | None) -> str:
    """The artifact's sha256 (lower-case hex), declared when the upload started or at its completion.

    `400` when neither declared one, or both did and they differ.
    """
    given = _lower(at_completion)
    if given is None:
        if at_start is None:
            raise BadRequest("No sha256 was declared: give the artifact's sha256 with the completion.")
        return at_start
    if at_start is not None and not hmac.compare_digest(at_start, given):
        raise BadRequest("The sha256 given differs from the one declared when the upload started.")
    return given


async def _parts_problem(s3: S3, row: sa.Row[Any], given: list[tuple[int, str]]) -> str:
    """Why S3 refused the parts, as precisely as its listing of the uploaded parts tells."""
    generic = "S3 refused the parts: each must be uploaded, with its ETag given, and all but the last full size."
    try:
        uploaded = {part.number: part for part in await _list_parts(s3, row)}
    except ClientError:
        return generic
    sizes = part_sizes(row.size, row.part_size)
    absent = [n for n, _ in given if n not in uploaded]
    wrong_etag = [n for n, etag in given if n in uploaded and _bare(etag) != _bare(uploaded[n].etag)]
    wrong_size = [n for n in uploaded if n <= len(sizes) and uploaded[n].size != sizes[n - 1]]
    problems = []
    if absent:
        problems.append(f"not uploaded: part {_numbers(absent)}")
    if wrong_etag:
        problems.append(f"ETag differs from the uploaded part's: part {_numbers(wrong_etag)}")
    if wrong_size:
        problems.append(f"size differs from the part's size: part {_numbers(sorted(wrong_size))}")
    if not problems:
        return generic
    return "S3 refused the parts (" + "; ".join(problems) + "). Upload them again and complete again."


async def _list_parts(s3: S3, row: sa.Row[Any]) -> list[_Part]:
    parts = []
    paginator = s3.client.get_paginator("list_parts")
    async for page in paginator.paginate(Bucket=s3.bucket, Key=row.s3_key, UploadId=row.s3_upload_id):
        for item in page.get("Parts", []):
            if "PartNumber" in item and "ETag" in item and "Size" in item:
                parts.append(_Part(item["PartNumber"], item["ETag"], item["Size"]))
    return sorted(parts, key=lambda part: part.number)


async def _stored_size(s3: S3, key: str) -> int | None:
    """The size of the object at `key`, or None if there is none."""
    try:
        head = await s3.client.head_object(Bucket=s3.bucket, Key=key)
    except ClientError as error:
        if error_code(error) in MISSING_OBJECT_CODES:
            return None
        raise
    return head["ContentLength"]


async def _abort_in_s3(s3: S3, key: str, s3_upload_id: str) -> None:
    """Abort the multipart upload and delete any object it made (an interrupted completion's)."""
    await abort_multipart_upload(s3, key, s3_upload_id)
    # The key is this upload's alone, and no committed version has it while the upload's row exists.
    await delete_object(s3, key)


async def _abort_quietly(s3: S3, key: str, s3_upload_id: str) -> None:
    """Abort an upload that no row describes; a failure is logged (the janitor's stale sweep catches it)."""
    try:
        await _abort_in_s3(s3, key, s3_upload_id)
    except Exception as error:  # noqa: BLE001 - the original error is what the caller must see
        log.warning("abort_upload_failed", key=key, **error_fields(error))


async def _forget(
    db: AsyncSession,
    row: sa.Row[Any],
    package_name: str,
    outcome: str,
    *,
    stored: int = 0,
    claim: datetime | None = None,
) -> bool:
    """Delete the upload's row (if it still carries `claim`, when one is given) and record how the upload
    ended, in the caller's transaction; whether it was there. The key stays an orphan, to be swept."""
    query = sa.delete(m.uploads).where(m.uploads.c.id == row.id)
    if claim is not None:
        query = query.where(m.uploads.c.claimed_at == claim)
    if (await db.execute(query.returning(m.uploads.c.id))).first() is None:
        return False
    await db.execute(
        sa.insert(m.transfers).values(
            package=package_name, package_id=row.package_id, version=row.version, username=row.created_by,
            direction="upload", mode="presigned", bytes=stored, outcome=outcome,
        )
    )  # fmt: skip
    return True


async def _discard_in_s3(db: AsyncSession, s3: S3, row: sa.Row[Any]) -> None:
    """Once the upload's row is gone for good: abort it in S3, delete any object, then forget the key
    (in the caller's transaction). A failure is logged: the key stays an orphan, which the janitor sweeps."""
    try:
        await _abort_in_s3(s3, row.s3_key, row.s3_upload_id)
    except Exception as error:  # noqa: BLE001 - what the janitor finishes must not fail what is done
        log.warning("abort_upload_failed", key=row.s3_key, **error_fields(error))
        return
    await db.execute(sa.delete(m.orphans).where(m.orphans.c.s3_key == row.s3_key))


async def _discard(
    db: AsyncSession,
    s3: S3,
    row: sa.Row[Any],
    package_name: str,
    outcome: str,
    *,
    stored: int = 0,
    claim: datetime | None = None,
) -> bool:
    """Forget the upload (committed at once: it stays gone although the request then fails), then
    discard it in S3; whether this request did (the row was gone, or `claim` no longer held)."""
    forgotten = await _forget(db, row, package_name, outcome, stored=stored, claim=claim)
    await checkpoint(db)
    if forgotten:
        await _discard_in_s3(db, s3, row)
        await checkpoint(db)
    return forgotten


async def _view(s3: S3, row: sa.Row[Any], package_name: str, completed: list[_Part]) -> schemas.Upload:
    remaining = (row.expires_at - datetime.now(UTC)).total_seconds()
    lifetime = max(1, min(PART_URL_SECONDS, int(remaining)))
    parts = []
    for number, size in enumerate(part_sizes(row.size, row.part_size), start=1):
        url = await s3.presigner.generate_presigned_url(
            "upload_part",
            Params={"Bucket": s3.bucket, "Key": row.s3_key, "UploadId": row.s3_upload_id, "PartNumber": number},
            ExpiresIn=lifetime,
        )
        parts.append(schemas.UploadPart(part_number=number, url=url, size=size))
        if number % 500 == 0:
            await asyncio.sleep(0)  # signing is CPU work: let other requests in between (10,000 parts max)
    return schemas.Upload(
        upload_id=str(row.id), package=package_name, version=row.version, size=row.size, sha256=row.sha256,
        part_size=row.part_size, expires_at=row.expires_at, parts=parts,
        completed_parts=[schemas.CompletedPart(part_number=p.number, etag=p.etag, size=p.size) for p in completed],
    )  # fmt: skip
