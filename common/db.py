"""SQLAlchemy 2 async on asyncpg: one engine (pool) per process, one session per request.

The rule for transactions, in every service:

- A request runs in one transaction (`transaction`, opened by the request pipeline): it commits
  when the handler returns and rolls back when anything raises, the error answered included.
  An operation declared `read_only` runs in none: each of its statements stands alone (`common.reads`).
- A flow that must make something durable before the end (a record that must stand although
  the request then fails, a failed login counted; or no connection held while a body streams or a
  password hashes) says so by calling `checkpoint`, the one other place that commits. After it,
  the session goes on in a new transaction.
- Work outside requests (workers, sweeps) opens its own `transaction` blocks.

Nothing else calls `commit()`; a test fails on any other call.
"""

from __future__ import annotations

import ssl
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pydantic_core
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from common.pool import FairQueuePool
from common.settings import CommonSettings

# The TLS context each engine's connections are made with, for connections made beside its pool.
_ENGINE_TLS: weakref.WeakKeyDictionary[Engine, ssl.SSLContext] = weakref.WeakKeyDictionary()


def database_tls(settings: CommonSettings) -> ssl.SSLContext | None:
    """TLS to the database that checks the server: its certificate must chain to `database_ssl_root_cert`
    and name the host connected to (libpq's `verify-full`), or the connection fails.

    None without a root certificate: asyncpg's default then applies (TLS if the server offers it,
    unverified), which is what a local server without TLS needs.
    """
    if settings.database_ssl_root_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.database_ssl_root_cert)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def engine_tls(engine: AsyncEngine) -> ssl.SSLContext | None:
    """The TLS context `create_engine` gave `engine`'s connections: for a connection made outside its
    pool (the queue's LISTEN), which must check the server as strictly."""
    return _ENGINE_TLS.get(engine.sync_engine)


def create_engine(settings: CommonSettings, application_name: str) -> AsyncEngine:
    """The process's pool, labelled so that `pg_stat_activity` tells the services apart.

    A connection that the database closed (a restart, a failover, a terminated backend) is replaced
    when it is taken from the pool (`_replace_if_closed`), so the service heals without being
    restarted itself, and without the round trip per checkout of `pool_pre_ping`. A failed
    statement's error never carries the values it was given (a token's digest, a password hash)
    into a log line or a traceback: its parameters are hidden, and so is the server's DETAIL, which
    quotes them (`_forget_row_values`). With `database_ssl_root_cert`, every connection checks the
    server's certificate (`database_tls`).
    """
    tls = database_tls(settings)
    engine = create_async_engine(
        settings.database_url.get_secret_value(),
        # The connections beyond `db_pool_size` stay open once made, as the others do. Closed as they
        # came back (SQLAlchemy's overflow), they were closed while requests waited for a connection
        # (asyncio's queue still counts one handed to a waiter) and opened again at once: under a
        # steady load, a new connection for about one request in fifty, and a slow tail.
        pool_size=settings.db_pool_size + settings.db_max_overflow,
        max_overflow=0,
        poolclass=FairQueuePool,  # requests get connections in the order they asked
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
        hide_parameters=True,
        # JSONB as it is read: pydantic_core's parser gives the values json.loads gives, in a tenth of its time.
        json_deserializer=pydantic_core.from_json,
        connect_args={
            **({} if tls is None else {"ssl": tls}),
            "timeout": settings.db_connect_timeout_seconds,
            # Client side: a server that stops answering (frozen, partitioned) still ends the wait.
            "command_timeout": settings.db_statement_timeout_ms / 1000 + 2,
            "server_settings": {
                "application_name": application_name,
                "statement_timeout": str(settings.db_statement_timeout_ms),
            },
        },
    )
    event.listen(engine.sync_engine, "handle_error", _forget_row_values)
    if tls is not None:
        _ENGINE_TLS[engine.sync_engine] = tls
    event.listen(engine.sync_engine, "checkout", _replace_if_closed)
    return engine


def _replace_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection whose socket the server closed is replaced before it is handed out.

    asyncpg notices a closed socket as it happens, even in an idle connection, so this costs no
    round trip. A connection that dies while in use fails its statement: a read runs once more on
    another connection (`common.reads`); in a transaction, the request is answered `503` and
    SQLAlchemy replaces every connection of the pool older than the failure.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the database closed this connection")


def _forget_row_values(context: ExceptionContext) -> None:
    """Drop PostgreSQL's DETAIL from a failed statement's driver errors.

    A constraint violation's DETAIL quotes the values of the row at fault (`Key (token_hash)=(\\x…)
    already exists`, `Failing row contains (…)`), and the driver's error prints it wherever the
    error is printed; the SQLSTATE, the message and the constraint's name are kept.
    """
    error: BaseException | None = context.original_exception
    for _ in range(4):  # the DB-API error, then the driver's own error that it wraps
        if error is None:
            return
        if getattr(error, "detail", None) is not None:
            error.detail = None  # type: ignore[attr-defined]
        error = error.__cause__


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (responses are built after it)."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """The one place that commits or rolls back: commit when the block succeeds, else roll back."""
    async with sessions() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


async def checkpoint(session: AsyncSession) -> None:
    """Commit what the session did so far, before the request ends (see the module's rule).

    The connection goes back to the pool until the session is used again: a request that then
    waits for something slow (a body to stream, a password to hash) holds none meanwhile.
    """
    await session.commit()


async def check_database(engine: AsyncEngine) -> None:
    """Readiness: a round trip to the database."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
