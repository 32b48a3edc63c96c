"""auth_service's domain logic: users, groups, logins, refresh and API tokens. No HTTP here."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import secrets
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
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
from common.errors import Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized
from common.pagination import aware_datetime, decode_cursor, page, text

log = structlog.get_logger(__name__)

API_TOKEN_PREFIX = "dpt_"  # noqa: S105 - a prefix, not a secret
THROTTLE_AFTER_FAILURES = 10
THROTTLE_FIRST_SECONDS = 30
THROTTLE_MAX_SECONDS = 3600
_USERNAME = re.compile(r"[a-z0-9][a-z0-9_.-]{2,63}")
_BAD_LOGIN = "Invalid username or password."
_BAD_REFRESH = "The refresh token is invalid, expired or revoked."
_BAD_API_TOKEN = "The API token is invalid, expired or revoked."  # noqa: S105


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


def _view(row: sa.Row[Any], groups: list[str]) -> schemas.User:
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
    return (await db.execute(query.with_for_update() if lock else query)).first()


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
    """A new user; `409` when the username is taken in any letter case."""
    group_ids = await _group_ids(db, sorted(set(groups))) if groups else []
    password_hash = await auth.passwords.hash(password)
    inserted = await db.execute(
        insert(m.users)
        .values(username=username.lower(), email=email, password_hash=password_hash, roles=sorted(set(roles)))
        .on_conflict_do_nothing(index_elements=["username"])
        .returning(m.users)
    )
    row = inserted.first()
    if row is None:
        raise Conflict(f"The username {username.lower()!r} is taken.")
    if group_ids:
        await db.execute(insert(m.group_members), [{"group_id": g, "user_id": row.id} for g in group_ids])
    return _view(row, sorted(set(groups)))


async def get_user(db: AsyncSession, username: str) -> schemas.User:
    """One user, with groups."""
    return (await _views(db, [await _require_user(db, username)]))[0]


async def user_by_id(db: AsyncSession, user_id: str) -> schemas.User:
    """The user behind a token's `sub`; gone users are `401`: their token no longer stands for anyone."""
    try:
        key = uuid.UUID(user_id)
    except ValueError:
        raise Unauthorized() from None
    row = (await db.execute(sa.select(m.users).where(m.users.c.id == key))).first()
    if row is None:
        raise Unauthorized("The user of this token no longer exists.")
    return (await _views(db, [row]))[0]


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


async def update_user(db: AsyncSession, auth: Auth, username: str, change: schemas.UpdateUser) -> schemas.User:
    """Admin changes; disabling a user or setting a password revokes their refresh and API tokens."""
    row = await _require_user(db, username, lock=True)
    values: dict[str, Any] = {"updated_at": sa.func.now()}
    fields = change.model_fields_set
    if "roles" in fields and change.roles is not None:
        values["roles"] = sorted(set(change.roles))
    if "disabled" in fields and change.disabled is not None:
        values["disabled"] = change.disabled
    if "email" in fields:
        values["email"] = change.email
    if "password" in fields and change.password is not None:
        values["password_hash"] = await auth.passwords.hash(change.password)
    await db.execute(sa.update(m.users).where(m.users.c.id == row.id).values(**values))
    if values.get("disabled") or "password_hash" in values:
        await _revoke_user_tokens(db, row.id, api_tokens=True)
    return await get_user(db, username)


async def delete_user(db: AsyncSession, username: str) -> None:
    """Remove a user; their tokens and memberships go with them."""
    deleted = await db.execute(sa.delete(m.users).where(m.users.c.username == username.lower()))
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


async def _check_throttle(db: AsyncSession, username: str) -> None:
    blocked_until = (
        await db.execute(sa.select(m.login_failures.c.blocked_until).where(m.login_failures.c.username == username))
    ).scalar_one_or_none()
    if blocked_until is not None and blocked_until > _now():
        retry_after = math.ceil((blocked_until - _now()).total_seconds())
        raise TooManyRequests(retry_after, "Too many failed logins for this username; try again later.")


async def _record_failure(db: AsyncSession, username: str) -> None:
    failures = (
        await db.execute(
            insert(m.login_failures)
            .values(username=username, failures=1)
            .on_conflict_do_update(
                index_elements=["username"],
                set_={"failures": m.login_failures.c.failures + 1, "updated_at": sa.func.now()},
            )
            .returning(m.login_failures.c.failures)
        )
    ).scalar_one()
    window = throttle_window(failures)
    if window:
        await db.execute(
            sa.update(m.login_failures)
            .where(m.login_failures.c.username == username)
            .values(blocked_until=sa.func.now() + timedelta(seconds=window))
        )
        log.warning("login_throttled", throttled_username=username, failures=failures, window_seconds=window)


async def login(db: AsyncSession, auth: Auth, username: str, password: str) -> schemas.TokenPair:
    """Check a password and start a login: an access token and the first refresh token of its chain."""
    name = username.lower()
    await _check_throttle(db, name)
    row = await _find_user(db, name) if _USERNAME.fullmatch(name) else None
    # Hashing takes tens of milliseconds and may queue for a thread: hold no connection meanwhile,
    # or a burst of logins would take the whole pool.
    await checkpoint(db)
    if not await auth.passwords.verify(row.password_hash if row is not None else None, password):
        await _record_failure(db, name)
        await checkpoint(db)  # the failure counts although the login fails
        raise Unauthorized(_BAD_LOGIN)
    if row is None:  # verify() is never true without a user; this keeps the type checker sure of it
        raise Unauthorized(_BAD_LOGIN)
    if row.disabled:
        raise Unauthorized("This account is disabled.")
    await db.execute(sa.delete(m.login_failures).where(m.login_failures.c.username == name))
    return await _start_pair(db, auth, row, login_id=uuid.uuid4())


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


async def _start_pair(db: AsyncSession, auth: Auth, row: sa.Row[Any], login_id: uuid.UUID) -> schemas.TokenPair:
    refresh_token = secrets.token_urlsafe(32)
    ttl = auth.settings.refresh_token_ttl_seconds
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
    return await _start_pair(db, auth, row, login_id=spent.login_id)


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
    rows, next_cursor = page(
        (await db.execute(statement)).all(), limit, lambda row: [row.created_at, row.id]
    )
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
    await db.execute(insert(m.group_members).values(group_id=group_id, user_id=user.id).on_conflict_do_nothing())


async def remove_member(db: AsyncSession, group: str, username: str) -> None:
    """Take a user out of a group (idempotent)."""
    group_id = await _group_id(db, group)
    user = await _require_user(db, username)
    await db.execute(
        sa.delete(m.group_members).where(m.group_members.c.group_id == group_id, m.group_members.c.user_id == user.id)
    )


def require_self_or_admin(principal: Principal, username: str) -> None:
    """Users may read themselves; admins and services (the validator resolves subjects) may read anyone."""
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
        await create_user(
            db, auth, username=username, password=password.get_secret_value(), email=None, roles=["admin"]
        )
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
