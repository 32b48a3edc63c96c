"""auth_service's domain logic: users, groups, logins, refresh and API tokens. No HTTP here."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import secrets
import time
import uuid
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth_service import models as m
from auth_service import schemas
from auth_service.keys import SigningKey
from auth_service.passwords import Passwords
from auth_service.settings import AuthSettings
from common.auth import AUDIENCE, Principal
from common.db import checkpoint, transaction
from common.errors import Conflict, DepotError, Forbidden, NotFound, TooManyRequests, Unauthorized, sqlstate
from common.naming import is_username
from common.pagination import aware_datetime, decode_cursor, page, text
from common.reads import Query, Reads, Row

log = structlog.get_logger(__name__)

API_TOKEN_PREFIX = "dpt_"  # noqa: S105 - a prefix, not a secret
THROTTLE_AFTER_FAILURES = 10
THROTTLE_FIRST_SECONDS = 30
THROTTLE_MAX_SECONDS = 3600
_BAD_LOGIN = "Invalid username or password."
_BAD_REFRESH = "The refresh token is invalid, expired or revoked."
_BAD_API_TOKEN = "The API token is invalid, expired or revoked."  # noqa: S105
_GONE_USER = "The user of this token no longer exists."
FOREIGN_KEY_VIOLATION = "23503"
# Roles that the registry cannot run without: the last enabled account holding one stays.
GUARDED_ROLES = ("admin", "service")
_GUARDED_ROLES_LOCK = zlib.crc32(b"depot-guarded-roles")


@dataclass(frozen=True)
class Auth:
    """What the domain logic works with, besides the request's session."""

    settings: AuthSettings
    passwords: Passwords
    signing: SigningKey


def digest(secret: str) -> bytes:
    """Tokens are stored only as SHA-256 digests: they are random, so no salt or slow hash is needed."""
    return hashlib.sha256(secret.encode()).digest()


def _now() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def _racing(*, gone: DepotError) -> Iterator[None]:
    """`gone` instead of a `500` when a row that a write inside refers to was deleted meanwhile.

    A row read earlier in the request (a group, a user) may be deleted by another transaction
    before this one writes a row that refers to it: the foreign key says so. (An equal row
    inserted meanwhile needs no such answer: every insert of a name that another request may
    insert too says `ON CONFLICT`, which waits for the other transaction and then sees its row.)
    """
    try:
        yield
    except sa.exc.IntegrityError as error:
        if sqlstate(error) == FOREIGN_KEY_VIOLATION:
            raise gone from None
        raise


# Users


async def _groups_by_user(db: AsyncSession, user_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    rows = await db.execute(
        sa.select(m.group_members.c.user_id, m.groups.c.name)
        .join(m.groups, m.groups.c.id == m.group_members.c.group_id)
        .where(m.group_members.c.user_id.in_(list(user_ids)))
        .order_by(m.groups.c.name)
    )
    found: dict[uuid.UUID, list[str]] = {}
    for user_id, name in rows:
        found.setdefault(user_id, []).append(name)
    return found


def _view(row: sa.Row[Any] | Row, groups: list[str]) -> schemas.User:
    return schemas.User(
        id=str(row.id),
        username=row.username,
        email=row.email,
        roles=sorted(row.roles),
        groups=groups,
        disabled=row.disabled,
        created_at=row.created_at,
    )


async def _views(db: AsyncSession, rows: Sequence[sa.Row[Any]]) -> list[schemas.User]:
    groups = await _groups_by_user(db, [row.id for row in rows])
    return [_view(row, groups.get(row.id, [])) for row in rows]


async def _find_user(db: AsyncSession, username: str, *, lock: bool = False) -> sa.Row[Any] | None:
    query = sa.select(m.users).where(m.users.c.username == username.lower())
    # FOR NO KEY UPDATE: enough to serialise changes of the row, and it lets a refresh or a login
    # insert tokens that refer to the user meanwhile (their foreign keys take FOR KEY SHARE).
    return (await db.execute(query.with_for_update(key_share=True) if lock else query)).first()


async def _require_user(db: AsyncSession, username: str, *, lock: bool = False) -> sa.Row[Any]:
    row = await _find_user(db, username, lock=lock)
    if row is None:
        raise NotFound(f"No user named {username.lower()!r}.")
    return row


async def _group_ids(db: AsyncSession, names: Sequence[str]) -> list[uuid.UUID]:
    rows = (await db.execute(sa.select(m.groups.c.name, m.groups.c.id).where(m.groups.c.name.in_(names)))).all()
    missing = sorted(set(names) - {name for name, _ in rows})
    if missing:
        raise NotFound(f"No group named {missing[0]!r}.")
    return [group_id for _, group_id in rows]


async def create_user(
    db: AsyncSession,
    auth: Auth,
    *,
    username: str,
    password: str,
    email: str | None,
    roles: Sequence[str] = (),
    groups: Sequence[str] = (),
) -> schemas.User:
    """A new user; `409` when the username is taken in any letter case, or was ever used.

    The name is spent first: a concurrent creation of the same name waits for this transaction,
    then finds it spent.
    """
    name = username.lower()
    group_ids = await _group_ids(db, sorted(set(groups))) if groups else []
    password_hash = await auth.passwords.hash(password)
    taken = Conflict(f"The username {name!r} is taken: a username, once used, is never given to another account.")
    spent = await db.execute(
        insert(m.spent_usernames)
        .values(username=name)
        .on_conflict_do_nothing(index_elements=["username"])
        .returning(m.spent_usernames.c.username)
    )
    if spent.first() is None:
        raise taken
    inserted = await db.execute(
        insert(m.users)
        .values(username=name, email=email, password_hash=password_hash, roles=sorted(set(roles)))
        .on_conflict_do_nothing(index_elements=["username"])
        .returning(m.users)
    )
    row = inserted.first()
    if row is None:
        raise taken
    if group_ids:
        with _racing(gone=NotFound(f"A group of {sorted(set(groups))!r} was deleted meanwhile; nothing was created.")):
            await db.execute(insert(m.group_members), [{"group_id": g, "user_id": row.id} for g in group_ids])
    return _view(row, sorted(set(groups)))


async def get_user(db: AsyncSession, username: str) -> schemas.User:
    """One user, with groups."""
    return (await _views(db, [await _require_user(db, username)]))[0]


def _groups_of_user() -> sa.ScalarSelect[Any]:
    return (
        sa.select(m.groups.c.name)
        .join(m.group_members, m.group_members.c.group_id == m.groups.c.id)
        .where(m.group_members.c.user_id == m.users.c.id)
        .order_by(m.groups.c.name)
        .scalar_subquery()
    )


# The caller's account with its groups, in one statement.
_USER_BY_ID = Query(
    sa.select(
        m.users.c.id, m.users.c.username, m.users.c.email, m.users.c.roles, m.users.c.disabled,
        m.users.c.created_at, sa.func.array(_groups_of_user()).label("groups"),
    ).where(m.users.c.id == sa.bindparam("user_id"))
)  # fmt: skip


def _user_key(principal_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(principal_id)
    except ValueError:
        raise Unauthorized() from None


async def require_current_caller(reads: Reads, principal: Principal) -> schemas.User:
    """The caller's account, as it stands; `401` unless it still exists, is enabled, and holds every
    role its token claims.

    Access tokens stand until they expire (every service verifies them by their signature alone),
    but auth_service holds the accounts: here a token of a deleted, disabled or demoted user stops
    working at once, before its body is read or a handler acts on it (the app runs this as
    `confirm_caller`, and hands the account to handlers: `GET /auth/me` reads nothing more).
    """
    row = await reads.first(_USER_BY_ID, user_id=_user_key(principal.user_id))
    if row is None:
        raise Unauthorized(_GONE_USER)
    if row.disabled:
        raise Unauthorized("This account is disabled.")
    if not principal.roles <= set(row.roles):
        raise Unauthorized("This token claims roles that its user no longer holds; log in again.")
    return _view(row, list(row.groups))


async def list_users(db: AsyncSession, query: schemas.UserQuery) -> schemas.UserList:
    """Users by username, optionally those whose name contains `q`."""
    position = decode_cursor(query.cursor, text)
    statement = sa.select(m.users).order_by(m.users.c.username).limit(query.limit + 1)
    if query.q:
        pattern = "%" + query.q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        statement = statement.where(m.users.c.username.like(pattern, escape="\\"))
    if position is not None:
        statement = statement.where(m.users.c.username > position[0])
    rows, cursor = page((await db.execute(statement)).all(), query.limit, lambda row: [row.username])
    return schemas.UserList(items=await _views(db, rows), next_cursor=cursor)


async def _lock_guarded_roles(db: AsyncSession) -> None:
    # Every change that may take a guarded role away from an enabled account waits here for the
    # others (until the end of the transaction): two admins deleting each other at once cannot
    # both see the other one as the admin that remains.
    await db.execute(sa.select(sa.func.pg_advisory_xact_lock(_GUARDED_ROLES_LOCK)))


async def _keep_guarded_roles(
    db: AsyncSession, row: sa.Row[Any], *, roles_after: Collection[str], enabled_after: bool
) -> None:
    """`409` when the change would leave no enabled account with a role of `GUARDED_ROLES`.

    The last enabled admin is the only one who can administer the registry; the last enabled
    `service` account is the one the services call each other with (`cli service-token`).
    Call under `_lock_guarded_roles`.
    """
    if row.disabled:
        return
    for role in GUARDED_ROLES:
        if role not in row.roles or (role in roles_after and enabled_after):
            continue
        others = await db.execute(
            sa.select(m.users.c.id)
            .where(sa.literal(role) == sa.any_(m.users.c.roles), m.users.c.disabled.is_(False), m.users.c.id != row.id)
            .limit(1)
        )
        if others.first() is None:
            raise Conflict(
                f"{row.username!r} is the last enabled account with the {role!r} role; "
                f"give the role to another account before deleting, disabling or demoting this one."
            )


async def update_user(db: AsyncSession, auth: Auth, username: str, change: schemas.UpdateUser) -> schemas.User:
    """Admin changes; disabling a user or setting a password revokes their refresh and API tokens.

    The last enabled admin and the last enabled `service` account cannot be disabled or lose
    that role (`409`).
    """
    values: dict[str, Any] = {"updated_at": sa.func.now()}
    fields = change.model_fields_set
    if "roles" in fields and change.roles is not None:
        values["roles"] = sorted(set(change.roles))
    if "disabled" in fields and change.disabled is not None:
        values["disabled"] = change.disabled
    if "email" in fields:
        values["email"] = change.email
    if "password" in fields and change.password is not None:
        values["password_hash"] = await auth.passwords.hash(change.password)  # before any lock is taken
    if "roles" in values or values.get("disabled"):
        await _lock_guarded_roles(db)
    row = await _require_user(db, username, lock=True)
    await _keep_guarded_roles(
        db, row, roles_after=values.get("roles", row.roles), enabled_after=not values.get("disabled", row.disabled)
    )
    await db.execute(sa.update(m.users).where(m.users.c.id == row.id).values(**values))
    if values.get("disabled") or "password_hash" in values:
        await _revoke_user_tokens(db, row.id, api_tokens=True)
    return await get_user(db, username)


async def delete_user(db: AsyncSession, username: str) -> None:
    """Remove a user: every token of theirs is revoked, their memberships go, the name stays spent.

    The last enabled admin and the last enabled `service` account cannot be deleted (`409`).
    The tokens are revoked before the row is deleted (the delete then removes them by cascade):
    that takes the token rows before the user row, in the order a refresh takes them, so a
    refresh racing the delete finishes first instead of deadlocking with it.
    """
    await _lock_guarded_roles(db)
    row = await _require_user(db, username)
    await _keep_guarded_roles(db, row, roles_after=(), enabled_after=False)
    await _revoke_user_tokens(db, row.id, api_tokens=True)
    deleted = await db.execute(sa.delete(m.users).where(m.users.c.id == row.id))
    if deleted.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"No user named {username.lower()!r}.")


async def change_password(db: AsyncSession, auth: Auth, principal: Principal, current: str, new: str) -> None:
    """A user's own password change; every refresh token of theirs is revoked."""
    row = (await db.execute(sa.select(m.users).where(m.users.c.id == uuid.UUID(principal.user_id)))).first()
    if row is None or not await auth.passwords.verify(row.password_hash, current):
        raise Unauthorized("The current password is wrong.")
    new_hash = await auth.passwords.hash(new)
    await db.execute(
        sa.update(m.users).where(m.users.c.id == row.id).values(password_hash=new_hash, updated_at=sa.func.now())
    )
    await _revoke_user_tokens(db, row.id, api_tokens=False)


async def _revoke_user_tokens(db: AsyncSession, user_id: uuid.UUID, *, api_tokens: bool) -> None:
    await db.execute(
        sa.update(m.refresh_tokens)
        .where(m.refresh_tokens.c.user_id == user_id, m.refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now())
    )
    if api_tokens:
        await db.execute(
            sa.update(m.api_tokens)
            .where(m.api_tokens.c.user_id == user_id, m.api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=sa.func.now())
        )


# Logins and tokens


def throttle_window(failures: int) -> int:
    """Seconds a username is blocked after `failures` failed logins in a row (0 below the threshold)."""
    if failures < THROTTLE_AFTER_FAILURES:
        return 0
    doublings = failures - THROTTLE_AFTER_FAILURES
    return THROTTLE_MAX_SECONDS if doublings >= 7 else min(THROTTLE_FIRST_SECONDS << doublings, THROTTLE_MAX_SECONDS)


async def _count_attempt(db: AsyncSession, username: str) -> int:
    """Count a login attempt as a failure before its password is checked; `429` while blocked.

    Returns the attempt's number in the current run of failures. See `login` for the design.
    """
    attempt: int | None = (
        await db.execute(
            insert(m.login_failures)
            .values(username=username, failures=1)
            .on_conflict_do_update(
                index_elements=["username"],
                set_={"failures": m.login_failures.c.failures + 1, "updated_at": sa.func.now()},
                where=sa.or_(
                    m.login_failures.c.blocked_until.is_(None), m.login_failures.c.blocked_until <= sa.func.now()
                ),
            )
            .returning(m.login_failures.c.failures)
        )
    ).scalar_one_or_none()
    if attempt is None:  # the row exists and is blocked: nothing was counted
        blocked_until = (
            await db.execute(sa.select(m.login_failures.c.blocked_until).where(m.login_failures.c.username == username))
        ).scalar_one_or_none()
        seconds = (blocked_until - _now()).total_seconds() if blocked_until is not None else 0
        raise TooManyRequests(max(1, math.ceil(seconds)), "Too many failed logins for this username; try again later.")
    window = throttle_window(attempt)
    if window:  # set before the row's lock is released: the next attempt finds the block
        await db.execute(
            sa.update(m.login_failures)
            .where(m.login_failures.c.username == username)
            .values(blocked_until=sa.func.now() + timedelta(seconds=window))
        )
    return attempt


async def login(db: AsyncSession, auth: Auth, username: str, password: str) -> schemas.TokenPair:
    """Check a password and start a login: an access token and the first refresh token of its chain.

    Throttling is exact however many attempts arrive at once, in however many tasks: each attempt
    is counted as a failure *before* its password is checked, by one `INSERT ... ON CONFLICT DO
    UPDATE ... RETURNING` on the username's row, whose row lock hands out attempt numbers one at
    a time across every task. The attempt that reaches the threshold sets the block in that same
    transaction, so the next one finds it and gets `429` without its password being checked.
    Attempts still being checked thus count as failures: at most `THROTTLE_AFTER_FAILURES` wrong
    passwords are ever checked in a row. The count is then committed, and the password checked
    with no connection held (argon2 takes tens of milliseconds and may queue for a thread: a
    login storm must not take the whole pool). A wrong password leaves the count as it stands;
    a right one resets it.
    """
    name = username.lower()
    attempt = await _count_attempt(db, name)
    row = await _find_user(db, name) if is_username(name) else None
    await checkpoint(db)  # the attempt counts, whatever follows; no connection is held while hashing
    if not await auth.passwords.verify(row.password_hash if row is not None else None, password):
        if window := throttle_window(attempt):
            log.warning("login_throttled", throttled_username=name, failures=attempt, window_seconds=window)
        raise Unauthorized(_BAD_LOGIN)
    if row is None:  # verify() is never true without a user; this keeps the type checker sure of it
        raise Unauthorized(_BAD_LOGIN)
    await db.execute(sa.delete(m.login_failures).where(m.login_failures.c.username == name))
    if row.disabled:
        await checkpoint(db)  # the right password reset the count, although the login fails
        raise Unauthorized("This account is disabled.")
    return await _start_pair(db, auth, row, login_id=uuid.uuid4(), gone=_BAD_LOGIN)


async def _access_token(db: AsyncSession, auth: Auth, row: sa.Row[Any]) -> str:
    groups = (await _groups_by_user(db, [row.id])).get(row.id, [])
    now = int(time.time())
    claims = {
        "iss": auth.settings.jwt_issuer,
        "aud": AUDIENCE,
        "sub": str(row.id),
        "name": row.username,
        "groups": groups,
        "roles": sorted(row.roles),
        "iat": now,
        "nbf": now,
        "exp": now + auth.settings.access_token_ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return auth.signing.sign(claims)


async def _start_pair(
    db: AsyncSession, auth: Auth, row: sa.Row[Any], login_id: uuid.UUID, *, gone: str
) -> schemas.TokenPair:
    refresh_token = secrets.token_urlsafe(32)
    ttl = auth.settings.refresh_token_ttl_seconds
    with _racing(gone=Unauthorized(gone)):  # the user was deleted since it was read
        await db.execute(
            sa.insert(m.refresh_tokens).values(
                user_id=row.id,
                login_id=login_id,
                token_hash=digest(refresh_token),
                expires_at=sa.func.now() + timedelta(seconds=ttl),
            )
        )
    return schemas.TokenPair(
        access_token=await _access_token(db, auth, row),
        expires_in=auth.settings.access_token_ttl_seconds,
        refresh_token=refresh_token,
        refresh_expires_in=ttl,
    )


async def _revoke_login(db: AsyncSession, login_id: uuid.UUID) -> None:
    # In the request's own transaction: a second connection would queue behind the row lock
    # that this transaction's UPDATE keeps after losing a race (PostgreSQL's EvalPlanQual).
    await db.execute(
        sa.update(m.refresh_tokens)
        .where(m.refresh_tokens.c.login_id == login_id, m.refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now())
    )


async def refresh(db: AsyncSession, auth: Auth, token: str) -> schemas.TokenPair:
    """Spend a refresh token for a new pair. Re-using a spent token revokes its whole login."""
    token_hash = digest(token)
    # The row lock serialises concurrent refreshes of one token: exactly one finds it unspent.
    spent = (
        await db.execute(
            sa.update(m.refresh_tokens)
            .where(
                m.refresh_tokens.c.token_hash == token_hash,
                m.refresh_tokens.c.spent_at.is_(None),
                m.refresh_tokens.c.revoked_at.is_(None),
                m.refresh_tokens.c.expires_at > sa.func.now(),
            )
            .values(spent_at=sa.func.now())
            .returning(m.refresh_tokens.c.user_id, m.refresh_tokens.c.login_id)
        )
    ).first()
    if spent is None:
        known = (
            await db.execute(
                sa.select(
                    m.refresh_tokens.c.login_id, m.refresh_tokens.c.spent_at, m.refresh_tokens.c.revoked_at
                ).where(m.refresh_tokens.c.token_hash == token_hash)
            )
        ).first()
        if known is not None and known.spent_at is not None and known.revoked_at is None:
            log.warning("refresh_token_reused", login_id=str(known.login_id))
            await _revoke_login(db, known.login_id)
            await checkpoint(db)  # the revocation stands although the refresh fails
            raise Unauthorized(_BAD_REFRESH)
        raise Unauthorized(_BAD_REFRESH)
    row = (await db.execute(sa.select(m.users).where(m.users.c.id == spent.user_id))).first()
    if row is None or row.disabled:
        await _revoke_login(db, spent.login_id)
        await checkpoint(db)  # the revocation stands although the refresh fails
        raise Unauthorized(_BAD_REFRESH)
    return await _start_pair(db, auth, row, login_id=spent.login_id, gone=_BAD_REFRESH)


async def logout(db: AsyncSession, token: str) -> None:
    """End the login that a refresh token belongs to (idempotent)."""
    login_id = sa.select(m.refresh_tokens.c.login_id).where(m.refresh_tokens.c.token_hash == digest(token))
    await db.execute(
        sa.update(m.refresh_tokens)
        .where(m.refresh_tokens.c.login_id.in_(login_id.scalar_subquery()), m.refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now())
    )


# API tokens


def _api_token_view(row: sa.Row[Any]) -> schemas.ApiToken:
    return schemas.ApiToken(
        id=str(row.id),
        name=row.name,
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
    )


async def create_api_token(db: AsyncSession, principal: Principal, name: str, days: int) -> schemas.NewApiToken:
    """A new API token; its secret is returned here only."""
    secret = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with _racing(gone=Unauthorized(_GONE_USER)):  # the caller was deleted since the token was checked
        row = (
            await db.execute(
                sa.insert(m.api_tokens)
                .values(
                    user_id=uuid.UUID(principal.user_id),
                    name=name,
                    token_hash=digest(secret),
                    expires_at=sa.func.now() + timedelta(days=days),
                )
                .returning(m.api_tokens)
            )
        ).one()
    return schemas.NewApiToken(token=secret, **_api_token_view(row).model_dump())


async def list_api_tokens(
    db: AsyncSession, principal: Principal, limit: int, cursor: str | None
) -> schemas.ApiTokenList:
    """The caller's tokens that were not revoked, newest first, without secrets."""
    position = decode_cursor(cursor, aware_datetime, uuid.UUID)
    statement = (
        sa.select(m.api_tokens)
        .where(m.api_tokens.c.user_id == uuid.UUID(principal.user_id), m.api_tokens.c.revoked_at.is_(None))
        .order_by(m.api_tokens.c.created_at.desc(), m.api_tokens.c.id.desc())
        .limit(limit + 1)
    )
    if position is not None:
        statement = statement.where(sa.tuple_(m.api_tokens.c.created_at, m.api_tokens.c.id) < position)
    rows, next_cursor = page((await db.execute(statement)).all(), limit, lambda row: [row.created_at, row.id])
    return schemas.ApiTokenList(items=[_api_token_view(row) for row in rows], next_cursor=next_cursor)


async def delete_api_token(db: AsyncSession, principal: Principal, token_id: str) -> None:
    """Delete a token; others' tokens are invisible (`404`) to all but admins."""
    try:
        key = uuid.UUID(token_id)
    except ValueError:
        raise NotFound("No such API token.") from None
    statement = sa.delete(m.api_tokens).where(m.api_tokens.c.id == key)
    if not principal.is_admin:
        statement = statement.where(m.api_tokens.c.user_id == uuid.UUID(principal.user_id))
    if (await db.execute(statement)).rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound("No such API token.")


async def exchange_api_token(db: AsyncSession, auth: Auth, token: str) -> schemas.AccessToken:
    """An access token for the holder of a valid API token; records its use."""
    if not token.startswith(API_TOKEN_PREFIX):
        raise Unauthorized(_BAD_API_TOKEN)
    found = (
        await db.execute(
            sa.update(m.api_tokens)
            .where(
                m.api_tokens.c.token_hash == digest(token),
                m.api_tokens.c.revoked_at.is_(None),
                m.api_tokens.c.expires_at > sa.func.now(),
            )
            .values(last_used_at=sa.func.now())
            .returning(m.api_tokens.c.user_id)
        )
    ).first()
    row = None
    if found is not None:
        row = (await db.execute(sa.select(m.users).where(m.users.c.id == found.user_id))).first()
    if row is None or row.disabled:
        raise Unauthorized(_BAD_API_TOKEN)
    return schemas.AccessToken(
        access_token=await _access_token(db, auth, row), expires_in=auth.settings.access_token_ttl_seconds
    )


# Groups


async def list_groups(db: AsyncSession, limit: int, cursor: str | None) -> schemas.GroupList:
    """Groups by name, with their member counts."""
    position = decode_cursor(cursor, text)
    members = sa.func.count(m.group_members.c.user_id)
    statement = (
        sa.select(m.groups.c.name, m.groups.c.description, members.label("member_count"))
        .select_from(m.groups.outerjoin(m.group_members, m.group_members.c.group_id == m.groups.c.id))
        .group_by(m.groups.c.id)
        .order_by(m.groups.c.name)
        .limit(limit + 1)
    )
    if position is not None:
        statement = statement.where(m.groups.c.name > position[0])
    rows, next_cursor = page((await db.execute(statement)).all(), limit, lambda row: [row.name])
    items = [schemas.Group(name=r.name, description=r.description, member_count=r.member_count) for r in rows]
    return schemas.GroupList(items=items, next_cursor=next_cursor)


async def create_group(db: AsyncSession, name: str, description: str) -> schemas.Group:
    """A new, empty group; `409` when the name exists."""
    inserted = await db.execute(
        insert(m.groups)
        .values(name=name, description=description)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(m.groups.c.id)
    )
    if inserted.first() is None:
        raise Conflict(f"A group named {name!r} exists.")
    return schemas.Group(name=name, description=description, member_count=0)


async def delete_group(db: AsyncSession, name: str) -> None:
    """Remove a group and its memberships."""
    deleted = await db.execute(sa.delete(m.groups).where(m.groups.c.name == name))
    if deleted.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"No group named {name!r}.")


async def _group_id(db: AsyncSession, name: str) -> uuid.UUID:
    found = await db.execute(sa.select(m.groups.c.id).where(m.groups.c.name == name))
    group_id: uuid.UUID | None = found.scalar_one_or_none()
    if group_id is None:
        raise NotFound(f"No group named {name!r}.")
    return group_id


async def add_member(db: AsyncSession, group: str, username: str) -> None:
    """Put a user in a group (idempotent). The change shows in tokens issued afterwards."""
    group_id = await _group_id(db, group)
    user = await _require_user(db, username)
    gone = NotFound(f"The group {group!r} or the user {user.username!r} was deleted meanwhile.")
    with _racing(gone=gone):
        await db.execute(insert(m.group_members).values(group_id=group_id, user_id=user.id).on_conflict_do_nothing())


async def remove_member(db: AsyncSession, group: str, username: str) -> None:
    """Take a user out of a group (idempotent)."""
    group_id = await _group_id(db, group)
    user = await _require_user(db, username)
    await db.execute(
        sa.delete(m.group_members).where(m.group_members.c.group_id == group_id, m.group_members.c.user_id == user.id)
    )


def require_may_read_user(principal: Principal, username: str) -> None:
    """Users may read themselves; admins and services (the validator resolving a subject) anyone."""
    if not (principal.is_admin or principal.is_service) and principal.username != username.lower():
        raise Forbidden("Only admins and services may read other users.")


# Bootstrap

_BOOTSTRAP_LOCK = zlib.crc32(b"depot-admin-bootstrap")


async def ensure_admin(sessions: async_sessionmaker[AsyncSession], auth: Auth) -> None:
    """Create the configured admin when no admin exists; never touch an existing account."""
    username, password = auth.settings.admin_username, auth.settings.admin_password
    if username is None or password is None:
        return
    async with transaction(sessions) as db:
        # Every task starts this at once on a deploy: one of them does it.
        await db.execute(sa.select(sa.func.pg_advisory_xact_lock(_BOOTSTRAP_LOCK)))
        has_admin = await db.execute(
            sa.select(m.users.c.id).where(sa.literal("admin") == sa.any_(m.users.c.roles)).limit(1)
        )
        if has_admin.first() is not None:
            return
        if await _find_user(db, username) is not None:
            log.warning("admin_bootstrap_skipped", reason="the username exists and is not an admin")
            return
        try:
            await create_user(
                db, auth, username=username, password=password.get_secret_value(), email=None, roles=["admin"]
            )
        except Conflict:
            log.warning("admin_bootstrap_skipped", reason="the username belonged to an account that was deleted")
            return
        log.info("admin_created", admin=username.lower())


async def ensure_admin_until_done(sessions: async_sessionmaker[AsyncSession], auth: Auth) -> None:
    """Retry the bootstrap until the database answers: the service starts even while it is down."""
    delay = 0.5
    while True:
        try:
            await ensure_admin(sessions, auth)
        except (OSError, sa.exc.DBAPIError, sa.exc.TimeoutError) as error:
            log.warning("admin_bootstrap_retry", error_type=type(error).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)
        else:
            return


async def ensure_service_token(
    db: AsyncSession, auth: Auth, username: str, current: str | None, *, days: int = 365
) -> str:
    """An API token of the `service` account `username`, creating the account if needed.

    `current` is kept while it is valid for another week; otherwise a new token is made.
    """
    row = await _find_user(db, username)
    if row is None:
        await create_user(
            db, auth, username=username, password=secrets.token_urlsafe(32), email=None, roles=["service"]
        )
        row = await _require_user(db, username)
    if "service" not in row.roles or row.disabled:
        raise Conflict(f"{username!r} exists and is not an enabled service account.")
    if current is not None:
        still_valid = await db.execute(
            sa.select(m.api_tokens.c.id).where(
                m.api_tokens.c.token_hash == digest(current),
                m.api_tokens.c.user_id == row.id,
                m.api_tokens.c.revoked_at.is_(None),
                m.api_tokens.c.expires_at > sa.func.now() + timedelta(days=7),
            )
        )
        if still_valid.first() is not None:
            return current
    principal = Principal(str(row.id), row.username, frozenset(), frozenset(row.roles))
    return (await create_api_token(db, principal, "service token", days)).token
