"""package_service's domain logic: packages, versions, search, yank and deletion. No HTTP here."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import asyncpg
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.selectable import LateralFromClause

from common.access import Action, PackageAccess, Subject, decide, enforce
from common.db import transaction
from common.errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, sqlstate
from common.logging import error_fields
from common.naming import Version, normalize_name, validate_name
from common.pagination import decode_cursor, page, text
from common.reads import Query, Reads, Row
from common.s3 import S3
from package_service import models as m
from package_service import schemas
from package_service.storage import abort_multipart_upload, delete_object

log = structlog.get_logger(__name__)

LATEST = "latest"
DEFAULT_REGEX_TIMEOUT_MS = 1000
# Names that the service's own routes use under the prefix (/packages/health, ...).
RESERVED_NAMES = frozenset({"health", "docs", "metrics", "openapi-json"})

_visible_status = m.versions.c.status.in_(["available", "yanked"])


def access_of(row: sa.Row[Any] | Row) -> PackageAccess:
    """The facts the access function decides on, from a package row."""
    return PackageAccess(
        owner=row.owner,
        visibility=row.visibility,
        read_groups=frozenset(row.read_groups),
        write_groups=frozenset(row.write_groups),
    )


async def find_package(db: AsyncSession, name: str, *, lock: bool = False) -> sa.Row[Any] | None:
    """The package that any spelling of `name` stands for."""
    try:
        validate_name(name)
    except BadRequest:
        return None  # no package can have such a name: nothing to look up
    query = sa.select(m.packages).where(m.packages.c.normalized_name == normalize_name(name))
    return (await db.execute(query.with_for_update() if lock else query)).first()


async def require_package(
    db: AsyncSession, subject: Subject, name: str, action: Action = "read", *, lock: bool = False
) -> sa.Row[Any]:
    """The package, if the subject may do `action` to it: `404` when it may not even read it."""
    row = await find_package(db, name, lock=lock)
    if row is None:
        raise NotFound("No such package.")
    enforce(subject, access_of(row), action)
    return row


def _package_facts() -> list[Any]:
    """A package's latest version and version count, for a statement that reads `packages`."""
    latest_version = (
        sa.select(m.versions.c.version)
        .where(m.versions.c.package_id == m.packages.c.id, m.versions.c.status == "available", ~m.versions.c.prerelease)
        .order_by(m.versions.c.sort_key.desc())
        .limit(1)
    )
    version_count = sa.select(sa.func.count()).where(m.versions.c.package_id == m.packages.c.id)
    # Correlated by name: they may sit deeper than the SELECT that reads `packages` (a lateral join).
    return [
        latest_version.correlate(m.packages).scalar_subquery().label("latest_version"),
        version_count.correlate(m.packages).scalar_subquery().label("version_count"),
    ]


def _package_columns() -> list[Any]:
    return [m.packages, *_package_facts()]


def package_view(row: sa.Row[Any] | Row | SimpleNamespace) -> schemas.Package:
    return schemas.Package(
        name=row.name,
        description=row.description,
        visibility=row.visibility,
        owner=row.owner,
        read_groups=sorted(row.read_groups),
        write_groups=sorted(row.write_groups),
        latest_version=row.latest_version,
        version_count=row.version_count,
        download_count=row.download_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _lookup_key(name: str) -> str | None:
    """The normalized name that any spelling of `name` stands for; None when no package can have such a name."""
    try:
        validate_name(name)
    except BadRequest:
        return None
    return normalize_name(name)


# Reads outside any transaction (`common.reads`): one statement each, compiled once.
_PACKAGE = Query(sa.select(*_package_columns()).where(m.packages.c.normalized_name == sa.bindparam("normalized_name")))
_PACKAGE_ACCESS = [
    m.packages.c.name.label("package"), m.packages.c.owner, m.packages.c.visibility, m.packages.c.read_groups,
    m.packages.c.write_groups,
]  # fmt: skip
# What a version's answer shows (`version_view`), with its id and sort key: all that its reads select.
_VERSION_COLUMNS = tuple(name for name in schemas.Version.model_fields if name != "package")


def _version_read(columns: Sequence[str]) -> list[sa.Column[Any]]:
    return [m.versions.c.id, m.versions.c.sort_key, *(m.versions.c[name] for name in columns)]


_VERSION_READ = _version_read(_VERSION_COLUMNS)
# A package and one of its versions (its columns all None when there is no such version).
_VERSION = Query(
    sa.select(*_PACKAGE_ACCESS, *_VERSION_READ)
    .select_from(
        m.packages.outerjoin(
            m.versions,
            sa.and_(
                m.versions.c.package_id == m.packages.c.id, m.versions.c.version_key == sa.bindparam("version_key")
            ),
        )
    )
    .where(m.packages.c.normalized_name == sa.bindparam("normalized_name"))
)
_LATEST = (
    sa.select(*_VERSION_READ)
    .where(m.versions.c.package_id == m.packages.c.id, m.versions.c.status == "available", ~m.versions.c.prerelease)
    .order_by(m.versions.c.sort_key.desc())
    .limit(1)
    .lateral("latest")
)
_LATEST_VERSION = Query(
    sa.select(*_PACKAGE_ACCESS, *_LATEST.c)
    .select_from(m.packages.outerjoin(_LATEST, sa.true()))
    .where(m.packages.c.normalized_name == sa.bindparam("normalized_name"))
)
_STATUS = sa.bindparam("status", type_=sa.Text)
_BEFORE = sa.bindparam("before", type_=sa.LargeBinary)
# A version's columns that may be large (metadata up to 64 KiB, a report with every check): a list
# reads them only when its `fields` ask for one of them.
_LARGE_VERSION_COLUMNS = frozenset({"description", "metadata", "validation"})
_SMALL_VERSION_COLUMNS = tuple(name for name in _VERSION_COLUMNS if name not in _LARGE_VERSION_COLUMNS)


def _versions_page(columns: Sequence[str]) -> LateralFromClause:
    """A page of a package's versions (their `columns`), highest precedence first, after the `before`
    sort key if given: those of one `status`, or (no status) all but the yanked unless `include_yanked`."""
    return (
        sa.select(
            *_version_read(columns), sa.func.row_number().over(order_by=m.versions.c.sort_key.desc()).label("position")
        )
        .where(
            m.versions.c.package_id == m.packages.c.id,
            sa.or_(
                m.versions.c.status == _STATUS,
                sa.and_(
                    _STATUS.is_(None),
                    sa.or_(sa.bindparam("include_yanked", type_=sa.Boolean), m.versions.c.status != "yanked"),
                ),
            ),
            sa.or_(_BEFORE.is_(None), m.versions.c.sort_key < _BEFORE),
        )
        .order_by(m.versions.c.sort_key.desc())
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .lateral("page")
    )


_PACKAGE_PREFIX = "package."  # no column has a dot in its name


def _versions_query(*, with_package: bool, large: bool) -> Query:
    """The package's access and the page: one row per version, or one with no version (`id` None).

    `large`: the versions' large columns too. `with_package`: the package's fields too, its columns
    named `package.…` (apart from the version's own), its latest version and count worked out once
    (a lateral join).

    The package's columns hold their values in the first row only, NULL in the others: a page of a
    hundred versions decodes them once, not a hundred times.
    """
    versions = _versions_page(_VERSION_COLUMNS if large else _SMALL_VERSION_COLUMNS)
    package: list[Any] = []
    joined = m.packages.outerjoin(versions, sa.true())
    if with_package:
        facts = sa.select(*_package_facts()).lateral("facts")
        joined = m.packages.join(facts, sa.true()).outerjoin(versions, sa.true())
        package = [
            c.label(_PACKAGE_PREFIX + c.name)
            for c in (*m.packages.c, *facts.c)
            if c.name in schemas.Package.model_fields  # only what the answer shows
        ]
    first_row = sa.func.coalesce(versions.c.position, 1) == 1  # no version: the one row there is
    once = [sa.case((first_row, column)).label(column.key) for column in (*_PACKAGE_ACCESS, *package)]
    return Query(
        sa.select(*once, *versions.c)
        .select_from(joined)
        .where(m.packages.c.normalized_name == sa.bindparam("normalized_name"))
        .order_by(versions.c.sort_key.desc())
    )


# By (with the package, with the large columns).
_VERSIONS = {
    (with_package, large): _versions_query(with_package=with_package, large=large)
    for with_package in (False, True)
    for large in (False, True)
}


async def get_package(reads: Reads, subject: Subject, name: str) -> schemas.Package:
    """One package the subject may read, with its latest version and version count (one statement)."""
    key = _lookup_key(name)
    row = None if key is None else await reads.first(_PACKAGE, normalized_name=key)
    if row is None:
        raise NotFound("No such package.")
    enforce(subject, access_of(row), "read")
    return package_view(row)


async def access_facts(db: AsyncSession, subject: Subject, name: str, version: str | None) -> schemas.AccessFacts:
    """The access list of a package, for a `service` (or admin) caller that decides for others.

    Such a caller gets these facts, and whether `version` exists, for any package; it gets no
    other right (the `service` role reads no private package, version list or bytes).
    """
    if not ({"service", "admin"} & subject.roles):
        raise Forbidden("This operation requires the service or admin role.")
    row = await find_package(db, name)
    if row is None:
        raise NotFound("No such package.")
    state = None
    if version is not None:
        try:
            found = await find_version(db, row, version)
        except NotFound:
            found = None
        if found is not None:
            state = schemas.VersionState(
                version=found.version, status=found.status, sha256=found.sha256, size=found.size
            )
    return schemas.AccessFacts(
        package=row.name, owner=row.owner, visibility=row.visibility, read_groups=list(row.read_groups),
        write_groups=list(row.write_groups), version=state,
    )  # fmt: skip


async def _view_by_id(db: AsyncSession, package_id: uuid.UUID) -> schemas.Package:
    row = (await db.execute(sa.select(*_package_columns()).where(m.packages.c.id == package_id))).one()
    return package_view(row)


async def create_package(db: AsyncSession, subject: Subject, body: schemas.CreatePackage) -> schemas.Package:
    """A new package owned by the caller; `409` when the name is taken in any spelling."""
    name = _new_name(body.name)
    package_id = await _insert_package(
        db,
        name,
        subject,
        description=body.description,
        visibility=body.visibility,
        read_groups=body.read_groups,
        write_groups=body.write_groups,
    )
    if package_id is None:
        raise Conflict(f"The package name {name!r} is taken (names differing only in case and . _ - are the same).")
    return await _view_by_id(db, package_id)


def _new_name(name: str) -> str:
    name = validate_name(name)
    if normalize_name(name) in RESERVED_NAMES:
        raise BadRequest(f"The name {name!r} is reserved.")
    return name


async def _insert_package(
    db: AsyncSession,
    name: str,
    owner: Subject,
    *,
    description: str = "",
    visibility: str = "private",
    read_groups: list[str] | None = None,
    write_groups: list[str] | None = None,
) -> uuid.UUID | None:
    """A new package owned by `owner`; None when the name is taken. `409` when it is reserved for another."""
    inserted = await db.execute(
        insert(m.packages)
        .values(
            name=name,
            normalized_name=normalize_name(name),
            description=description,
            visibility=visibility,
            owner=owner.username,
            read_groups=sorted(set(read_groups or [])),
            write_groups=sorted(set(write_groups or [])),
        )
        .on_conflict_do_nothing(index_elements=["normalized_name"])
        .returning(m.packages.c.id)
    )
    package_id: uuid.UUID | None = inserted.scalar_one_or_none()
    if package_id is not None:
        # After the insert: one that waited for a deletion of the same name to commit sees its reservation.
        await _take_reserved_name(db, owner, name)
    return package_id


def _reserved(name: str) -> Conflict:
    return Conflict(
        f"The package name {name!r} belonged to a deleted package: only its last owner or an admin may create it again."
    )


async def refuse_reserved_name(db: AsyncSession, subject: Subject, name: str) -> None:
    """`409` when `name` is a deleted package's, reserved for its last owner (and admins), and `subject` is neither."""
    reserved = await db.execute(
        sa.select(m.reserved_names.c.last_owner).where(m.reserved_names.c.normalized_name == normalize_name(name))
    )
    last_owner = reserved.scalar_one_or_none()
    if last_owner is not None and last_owner != subject.username and not subject.is_admin:
        raise _reserved(name)


async def _take_reserved_name(db: AsyncSession, subject: Subject, name: str) -> None:
    """A package of this name exists again: its reservation, if any, is over (the subject must be entitled)."""
    await refuse_reserved_name(db, subject, name)
    await db.execute(sa.delete(m.reserved_names).where(m.reserved_names.c.normalized_name == normalize_name(name)))


async def package_for_upload(db: AsyncSession, subject: Subject, name: str) -> uuid.UUID:
    """The package a version is published to, created (owned by the caller) when it does not exist."""
    row = await find_package(db, name)
    if row is None:
        created = await _insert_package(db, _new_name(name), subject)
        if created is not None:
            return created
        row = await find_package(db, name)  # created meanwhile by someone else
        if row is None:
            raise Conflict("The package changed while publishing; try again.")
    enforce(subject, access_of(row), "write")
    package_id: uuid.UUID = row.id
    return package_id


def _like(text: str) -> str:
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@functools.cache
def _search(*, admin: bool, q: bool, regex: bool, owner: bool, after: bool) -> Query:
    """The listing statement for one combination of filters (compiled once each)."""
    statement = sa.select(*_package_columns()).order_by(m.packages.c.normalized_name).limit(sa.bindparam("limit"))
    if not admin:
        # The same rules as common.access.decide, as SQL, so that listing is one indexed query.
        groups = sa.bindparam("groups", type_=m.packages.c.read_groups.type)
        statement = statement.where(
            sa.or_(
                m.packages.c.owner == sa.bindparam("username"),
                m.packages.c.visibility == "public",
                m.packages.c.read_groups.overlap(groups),
                m.packages.c.write_groups.overlap(groups),
            )
        )
    if q:
        # Names in any spelling, as paths find them (`resnet_tiny` finds `Resnet.Tiny`); both served by trigram indexes.
        statement = statement.where(
            sa.or_(
                m.packages.c.normalized_name.like(sa.bindparam("name_like"), escape="\\"),
                sa.func.lower(m.packages.c.description).like(sa.bindparam("description_like"), escape="\\"),
            )
        )
    if regex:
        pattern: sa.BindParameter[str] = sa.bindparam("regex")
        statement = statement.where(
            sa.or_(m.packages.c.name.regexp_match(pattern, "i"), m.packages.c.description.regexp_match(pattern, "i"))
        )
    if owner:
        statement = statement.where(m.packages.c.owner == sa.bindparam("owner"))
    if after:
        statement = statement.where(m.packages.c.normalized_name > sa.bindparam("after"))
    return Query(statement)


async def list_packages(
    reads: Reads, subject: Subject, query: schemas.PackageQuery, regex_timeout_ms: int = DEFAULT_REGEX_TIMEOUT_MS
) -> schemas.PackageList:
    """The packages the subject may read, by name, filtered by substring, regex or owner."""
    position = decode_cursor(query.cursor, text)
    search = _search(
        admin=subject.is_admin, q=bool(query.q), regex=bool(query.regex), owner=bool(query.owner),
        after=position is not None,
    )  # fmt: skip
    values: dict[str, Any] = {"limit": query.limit + 1, "username": subject.username, "groups": sorted(subject.groups)}
    if query.q:
        values |= {"name_like": _like(normalize_name(query.q)), "description_like": _like(query.q)}
    if query.regex:
        values["regex"] = query.regex
    if query.owner:
        values["owner"] = query.owner.lower()
    if position is not None:
        values["after"] = position[0]
    if query.regex is None:
        rows = await reads.all(search, **values)
    else:
        rows = await _run_search(reads, search, values, regex_timeout_ms)
    items, cursor = page(rows, query.limit, lambda row: [row.normalized_name])
    return schemas.PackageList(items=[package_view(row) for row in items], next_cursor=cursor)


async def _run_search(reads: Reads, search: Query, values: dict[str, Any], timeout_ms: int) -> list[Row]:
    # A user's regex may be costly: bound it.
    try:
        return await reads.all(search, timeout_ms=timeout_ms, **values)
    except asyncpg.PostgresError as error:
        code = sqlstate(error)
        if code == "57014":  # query_canceled: the statement timeout
            raise BadRequest("The regular expression is too costly to evaluate.") from None
        if code in {"2201B", "22023"}:  # invalid_regular_expression, invalid_parameter_value
            raise BadRequest("The regular expression is not valid.") from None
        raise


FindUser = Callable[[str], Awaitable[str]]
"""The username of an existing user (as auth_service spells it), or a `400` when there is none."""


async def update_package(
    db: AsyncSession, subject: Subject, name: str, change: schemas.UpdatePackage, *, find_user: FindUser
) -> schemas.Package:
    """Change description, visibility or groups (the owner's or an admin's right), or the owner (admins only)."""
    row = await require_package(db, subject, name, "admin")
    values: dict[str, Any] = {"updated_at": sa.func.now()}
    if change.owner is not None:
        if not subject.is_admin:
            raise Forbidden("Only an admin may move a package to another owner.")
        owner = change.owner.lower()
        if owner != row.owner:
            # Asked before the row is locked: no lock waits on another service.
            values["owner"] = await find_user(owner)
    row = await require_package(db, subject, name, "admin", lock=True)
    for field in ("description", "visibility"):
        if field in change.model_fields_set and getattr(change, field) is not None:
            values[field] = getattr(change, field)
    for field in ("read_groups", "write_groups"):
        if field in change.model_fields_set and getattr(change, field) is not None:
            values[field] = sorted(set(getattr(change, field)))
    await db.execute(sa.update(m.packages).where(m.packages.c.id == row.id).values(**values))
    return await _view_by_id(db, row.id)


@dataclass(frozen=True)
class DeletedPackage:
    """What goes from S3 once a package's deletion has committed: open multipart uploads, then bytes."""

    keys: list[str]
    multipart_uploads: list[tuple[str, str]]  # (key, S3 upload id) of the presigned uploads that were open


async def delete_package(db: AsyncSession, subject: Subject, name: str) -> DeletedPackage:
    """Delete a package with all its versions and open uploads, and reserve its name for its owner.

    The keys are remembered as orphans in the same transaction, so bytes whose deletion fails
    afterwards are swept later, and no row ever points at missing bytes. The open uploads are
    recorded as aborted; their multipart uploads are aborted in S3 after the commit
    (`discard_deleted`), or by the janitor if that fails.
    """
    row = await require_package(db, subject, name, "admin", lock=True)
    keys = list((await db.execute(sa.select(m.versions.c.s3_key).where(m.versions.c.package_id == row.id))).scalars())
    uploads = (await db.execute(sa.select(m.uploads).where(m.uploads.c.package_id == row.id))).all()
    await db.execute(sa.delete(m.packages).where(m.packages.c.id == row.id))
    await db.execute(
        insert(m.reserved_names)
        .values(normalized_name=row.normalized_name, name=row.name, last_owner=row.owner)
        .on_conflict_do_update(
            index_elements=["normalized_name"],
            set_={"name": row.name, "last_owner": row.owner, "reserved_at": sa.func.now()},
        )
    )
    for upload in uploads:
        await db.execute(
            sa.insert(m.transfers).values(
                package=row.name, package_id=row.id, version=upload.version, username=upload.created_by,
                direction="upload", mode="presigned", bytes=0, outcome="aborted",
            )
        )  # fmt: skip
    upload_keys = [upload.s3_key for upload in uploads]
    await remember_orphans(db, keys + upload_keys)
    return DeletedPackage(
        keys=keys + upload_keys, multipart_uploads=[(upload.s3_key, upload.s3_upload_id) for upload in uploads]
    )


async def discard_deleted(s3: S3, sessions: async_sessionmaker[AsyncSession], deleted: DeletedPackage) -> None:
    """After a package's deletion committed: abort its open multipart uploads (so that their part URLs
    take no more bytes), then delete its bytes. What fails is logged and left to the janitor."""
    for key, upload_id in deleted.multipart_uploads:
        try:
            await abort_multipart_upload(s3, key, upload_id)
        except Exception as error:  # noqa: BLE001 - the janitor aborts multipart uploads that no row accounts for
            log.warning("abort_upload_failed", key=key, **error_fields(error))
    await delete_orphaned_bytes(s3, sessions, deleted.keys)


async def remember_orphans(db: AsyncSession, keys: list[str]) -> None:
    """Keys of bytes to delete from S3 (the sweeper retries those whose deletion failed)."""
    if keys:
        await db.execute(insert(m.orphans).on_conflict_do_nothing(), [{"s3_key": key} for key in keys])


async def delete_orphaned_bytes(s3: S3, sessions: async_sessionmaker[AsyncSession], keys: list[str]) -> None:
    """Delete bytes whose rows are gone (after the commit that removed them), then their orphan rows.

    Keys whose deletion fails stay orphans, and the janitor tries again later.
    """
    deleted = []
    for key in keys:
        try:
            await delete_object(s3, key)
        except Exception as error:  # noqa: BLE001 - the sweeper retries it
            log.warning("delete_bytes_failed", key=key, **error_fields(error))
        else:
            deleted.append(key)
    if deleted:
        async with transaction(sessions) as db:
            await db.execute(sa.delete(m.orphans).where(m.orphans.c.s3_key.in_(deleted)))


# Versions


def _version_fields(
    row: sa.Row[Any] | Row, package_name: str, names: Sequence[str] = _VERSION_COLUMNS
) -> dict[str, Any]:
    # Only the model's columns, read by name (a row may hold many more).
    columns = row._mapping if isinstance(row, sa.Row) else row
    fields = {name: columns[name] for name in names}
    fields["package"] = package_name
    return fields


def version_view(row: sa.Row[Any] | Row, package_name: str) -> schemas.Version:
    return schemas.Version.model_validate(_version_fields(row, package_name))


async def find_version(db: AsyncSession, package: sa.Row[Any], version: str, *, lock: bool = False) -> sa.Row[Any]:
    """A version by its string (any build metadata, optional `v`) or `latest`; `404` if none."""
    query = sa.select(m.versions).where(m.versions.c.package_id == package.id)
    if version == LATEST:
        query = query.where(m.versions.c.status == "available", ~m.versions.c.prerelease)
        query = query.order_by(m.versions.c.sort_key.desc()).limit(1)
    else:
        try:
            identity = Version.parse(version).identity
        except BadRequest:
            raise NotFound("No such version.") from None
        query = query.where(m.versions.c.version_key == identity)
    row = (await db.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound("No such version.")
    return row


async def list_versions(reads: Reads, subject: Subject, name: str, query: schemas.VersionQuery) -> schemas.VersionList:
    """Versions of a package, highest precedence first, and the package too with `include=package` (one statement).

    With `fields`, the versions have only those fields, and the large columns are read only if
    one of them is asked for.
    """
    position = decode_cursor(query.cursor, bytes.fromhex)
    key = _lookup_key(name)
    with_package = query.include == "package"
    shown = query.version_fields
    large = shown is None or bool(shown & _LARGE_VERSION_COLUMNS)
    rows = []
    if key is not None:
        rows = await reads.all(
            _VERSIONS[with_package, large], normalized_name=key, status=query.status,
            include_yanked=query.include_yanked, before=None if position is None else position[0],
            limit=query.limit + 1,
        )  # fmt: skip
    if not rows:
        raise NotFound("No such package.")
    first = rows[0]  # the only row that holds the package's columns
    enforce(subject, access_of(first), "read")
    versions = [row for row in rows if row.id is not None]
    items, cursor = page(versions, query.limit, lambda row: [row.sort_key])
    package = package_view(first.prefixed(_PACKAGE_PREFIX)) if with_package else None
    names = _VERSION_COLUMNS if shown is None else [name for name in _VERSION_COLUMNS if name in shown]
    shape = schemas.VersionList if shown is None else schemas.version_list_of(shown)
    versions_fields = [_version_fields(row, first.package, names) for row in items]
    return shape.model_validate({"items": versions_fields, "next_cursor": cursor, "package": package})  # in one call


async def get_version(reads: Reads, subject: Subject, name: str, version: str) -> schemas.Version:
    """One version (or `latest`) of a package the subject may read (one statement)."""
    key = _lookup_key(name)
    row = None
    if key is not None and version == LATEST:
        row = await reads.first(_LATEST_VERSION, normalized_name=key)
    elif key is not None:
        try:
            identity = Version.parse(version).identity
        except BadRequest:
            identity = ""  # no version has it: the package is still looked up, and is a 404 first
        row = await reads.first(_VERSION, normalized_name=key, version_key=identity)
    if row is None:
        raise NotFound("No such package.")
    enforce(subject, access_of(row), "read")
    if row.id is None:
        raise NotFound("No such version.")
    return version_view(row, row.package)


async def update_version(
    db: AsyncSession, subject: Subject, name: str, version: str, change: schemas.UpdateVersion
) -> schemas.Version:
    """Edit a version's description or metadata (its bytes never change)."""
    package = await require_package(db, subject, name, "write")
    row = await find_version(db, package, version, lock=True)
    values: dict[str, Any] = {}
    if change.description is not None:
        values["description"] = change.description
    if change.metadata is not None:
        if len(json.dumps(change.metadata, separators=(",", ":")).encode()) > schemas.METADATA_MAX_BYTES:
            raise PayloadTooLarge("Version metadata may not exceed 64 KiB of JSON.")
        values["metadata"] = change.metadata
    if values:
        await db.execute(sa.update(m.versions).where(m.versions.c.id == row.id).values(**values))
    return version_view(await find_version(db, package, row.version), package.name)


async def record_status_change(
    db: AsyncSession, version: sa.Row[Any], to_status: str, *, reason: str, actor: str
) -> None:
    """Write a version's change of status to its package's history (`version_events`), and log it.

    `version` is the row as it was before the change; the caller changes the row itself.
    """
    event = {
        "package_id": version.package_id, "version_id": version.id, "version": version.version,
        "from_status": version.status, "to_status": to_status, "reason": reason, "actor": actor,
    }  # fmt: skip
    await db.execute(sa.insert(m.version_events).values(**event))
    log.info("version_status_changed", **{key: str(value) for key, value in event.items()})


async def set_yanked(
    db: AsyncSession, subject: Subject, name: str, version: str, reason: str | None
) -> schemas.Version:
    """Yank an available version (`reason` given) or unyank a yanked one (`reason` None)."""
    package = await require_package(db, subject, name, "write")
    row = await find_version(db, package, version, lock=True)
    wanted_from, wanted_to = ("available", "yanked") if reason is not None else ("yanked", "available")
    if row.status != wanted_from:
        raise Conflict(f"Only an {wanted_from} version can become {wanted_to}; this one is {row.status}.")
    if reason is None and (row.validation or {}).get("status") == "failed":
        # A rerun rejected it while it was yanked: unyanking must not serve what validation refuses.
        raise Conflict("This version failed its latest validation: it cannot be made available again.")
    await db.execute(
        sa.update(m.versions).where(m.versions.c.id == row.id).values(status=wanted_to, yank_reason=reason)
    )
    why = "unyanked" if reason is None else f"yanked: {reason}"
    await record_status_change(db, row, wanted_to, reason=why, actor=subject.username)
    await db.execute(sa.update(m.packages).where(m.packages.c.id == package.id).values(updated_at=sa.func.now()))
    return version_view(await find_version(db, package, row.version), package.name)


async def delete_version(db: AsyncSession, subject: Subject, name: str, version: str) -> str:
    """Delete a version (its string stays spent); returns the S3 key whose bytes must go next."""
    package = await require_package(db, subject, name, "admin")
    row = await find_version(db, package, version, lock=True)
    await db.execute(sa.delete(m.versions).where(m.versions.c.id == row.id))
    await remember_orphans(db, [row.s3_key])
    key: str = row.s3_key
    return key


def may(subject: Subject, row: sa.Row[Any], action: Action) -> bool:
    """Whether the subject may do `action` to a package row."""
    return decide(subject, access_of(row), action).allowed
