"""validator_service's domain logic: access decisions, rules and reports. No HTTP here."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from common import access
from common.access import Subject
from common.auth import Principal
from common.contracts import ValidationJob, VersionState, send
from common.errors import Conflict, Forbidden, NotFound
from common.naming import Version, normalize_name
from validator_service import models as m
from validator_service import schemas
from validator_service.content import Rules
from validator_service.packages import PackageDirectory
from validator_service.users import UserDirectory

# Access decisions
#
# The reasons of `POST /validate`: those of `common.access` (`decide`, `decide_download`: who may,
# or why not, with "no such package" for a subject that may not read the package), and these,
# given only when they reveal nothing the subject could not learn otherwise:

LATEST = "latest"
"""The version package_service resolves to the highest `available`, non-prerelease one (API.md section 3)."""
NO_SUCH_VERSION = "no such version"
"""The subject may do the action to the package, but the version asked about does not exist."""
NO_SUCH_USER = "no such user"
"""The subject named by username alone is no user (only admins and services may name others)."""
USER_DISABLED = "user is disabled"
"""The subject named by username alone is a disabled user: it may do nothing."""

_ONLY_PRIVILEGED = "Only admin and service callers may ask about another subject."


async def subject_for(
    users: UserDirectory, caller: Principal, named: schemas.SubjectBody | None
) -> Subject | access.Decision:
    """Whom a decision is for: the caller, or the subject it names if it may name others.

    A subject named by username alone is that user as auth_service knows it now (a refusal if
    there is no such user or it is disabled), except the caller itself: it is decided for as its
    token says, as package_service would. `groups` or `roles` given are taken as given (one left
    out is empty).
    """
    own = Subject.of(caller)
    if named is None:
        return own
    username = named.username.lower()  # usernames are lowercase everywhere in Depot
    privileged = caller.is_admin or caller.is_service
    if named.groups is None and named.roles is None:
        if username == own.username:
            return own
        if not privileged:
            raise Forbidden(_ONLY_PRIVILEGED)
        account = await users.user(username)
        if account is None:
            return access.Decision(allowed=False, reason=NO_SUCH_USER)
        if account.disabled:
            return access.Decision(allowed=False, reason=USER_DISABLED)
        return account.subject
    subject = Subject(username=username, groups=frozenset(named.groups or ()), roles=frozenset(named.roles or ()))
    if subject != own and not privileged:
        raise Forbidden(_ONLY_PRIVILEGED)
    return subject


async def decision(
    packages: PackageDirectory, users: UserDirectory, caller: Principal, body: schemas.ValidateRequest
) -> schemas.Decision:
    """`POST /validate`: the shared access function on the package's access list, as package_service applies it.

    In package_service's order: may the subject do the action to the package (a subject that may
    not read it is told "no such package"), then does the version exist, then, for `download`,
    the version's state. A `download` without a version is of `latest`, as
    `GET .../versions/latest/content` is.
    """
    subject = await subject_for(users, caller, body.subject)
    if isinstance(subject, access.Decision):
        return schemas.Decision(allowed=subject.allowed, reason=subject.reason)
    version = LATEST if body.action == "download" and body.version is None else body.version
    facts = await packages.facts(body.package, version)
    if facts is None:
        return schemas.Decision(allowed=False, reason=access.NO_SUCH_PACKAGE)
    decided = access.decide(subject, facts.access, "read" if body.action == "download" else body.action)
    if decided.allowed and version is not None:
        if facts.version is None:
            decided = access.Decision(allowed=False, reason=NO_SUCH_VERSION)
        elif body.action == "download":
            decided = access.decide_download(subject, facts.access, facts.version.status)
    return schemas.Decision(allowed=decided.allowed, reason=decided.reason)


# Rules


def _rules_of(row: sa.Row[Any]) -> Rules:
    stored = {field.name: row._mapping[field.name] for field in fields(Rules)}
    return Rules(**stored | {"allowed_licenses": tuple(row.allowed_licenses)})


async def current_rules(db: AsyncSession) -> Rules:
    """The rules in force: what an admin set last, or the defaults."""
    row = (await db.execute(sa.select(m.rules).where(m.rules.c.id == 1))).first()
    return Rules() if row is None else _rules_of(row)


async def replace_rules(db: AsyncSession, caller: Principal, body: schemas.RulesBody) -> Rules:
    """`PUT /validate/rules` (the route admits admins only): for validations that start from now on,
    reruns of decided versions included."""
    rules = body.rules()
    values = asdict(rules) | {
        "allowed_licenses": list(rules.allowed_licenses), "updated_by": caller.username, "updated_at": sa.func.now(),
    }  # fmt: skip
    await db.execute(insert(m.rules).values(id=1, **values).on_conflict_do_update(index_elements=["id"], set_=values))
    return rules


# Reports


def report_view(row: sa.Row[Any]) -> schemas.Report:
    """The API's Report for a stored report row."""
    return schemas.Report(
        package=row.package, version=row.version, sha256=row.sha256, size=row.size, status=row.status,
        checks=row.checks, started_at=row.started_at, finished_at=row.finished_at, error=row.error,
    )  # fmt: skip


async def _readable_version(
    directory: PackageDirectory, caller: Principal, package: str, version: str
) -> tuple[str, VersionState]:
    """The package's name and an existing version the caller may read; `404` otherwise (existence is not leaked)."""
    facts = await directory.facts(package, version)
    if facts is None or not access.decide(Subject.of(caller), facts.access, "read").allowed:
        raise NotFound("No such package.")
    if facts.version is None:
        raise NotFound("No such version.")
    return facts.package, facts.version


async def _find_report(
    db: AsyncSession, package: str, version: VersionState, *, lock: bool = False
) -> sa.Row[Any] | None:
    query = (
        sa.select(m.reports)
        .where(
            m.reports.c.normalized_name == normalize_name(package),
            m.reports.c.version_key == Version.parse(version.version).identity,
        )
        .order_by(m.reports.c.created_at.desc())
        .limit(1)
    )
    return (await db.execute(query.with_for_update() if lock else query)).first()


async def get_report(
    db: AsyncSession, directory: PackageDirectory, caller: Principal, package: str, version: str
) -> schemas.Report:
    """The report of a version, for whoever may read its package."""
    name, found = await _readable_version(directory, caller, package, version)
    row = await _find_report(db, name, found)
    if row is not None:
        return report_view(row)
    if found.status == "pending":  # its job is queued and has not started yet
        return schemas.Report(
            package=name, version=found.version, sha256=found.sha256, size=found.size, status="queued",
            checks=[], started_at=None, finished_at=None, error=None,
        )  # fmt: skip
    raise NotFound("This version has no validation report.")


async def rerun(
    db: AsyncSession, directory: PackageDirectory, caller: Principal, package: str, version: str
) -> schemas.Report:
    """Validate a version again (admin); the report says `queued` until a worker takes it.

    The rerun runs under the rules in force when it starts and its verdict decides again: an
    `available` version that now fails becomes `rejected`, a `rejected` one that now passes
    becomes `available`, a `yanked` one stays `yanked` with the new report (package_service's
    `workers` module has the rules). The route admits admins only.
    """
    row = await _find_report(db, *await _readable_version(directory, caller, package, version), lock=True)
    if row is None:
        raise Conflict("This version's first validation has not started yet; it is queued.")
    queued = await send(db, job_of(row))
    if not queued:  # already queued or running: that validation is the rerun
        return report_view(row)
    updated = (
        await db.execute(
            sa.update(m.reports)
            .where(m.reports.c.version_id == row.version_id)
            .values(status="queued", checks=[], error=None, started_at=None, finished_at=None, updated_at=sa.func.now())
            .returning(*m.reports.c)
        )
    ).one()
    return report_view(updated)


def job_of(row: sa.Row[Any]) -> ValidationJob:
    """The validation job of a stored report: what package_service queued for it."""
    return ValidationJob(
        version_id=row.version_id, package=row.package, version=row.version, s3_key=row.s3_key,
        sha256=row.sha256, size=row.size, filename=row.filename,
    )  # fmt: skip
