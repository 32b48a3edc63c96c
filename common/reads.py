"""Reads that need no transaction: a statement compiled once, run on a connection of the pool.

An operation that only reads (declared `read_only`, see `common.api`) runs no transaction: each
of its statements is a single `SELECT`, which sees one snapshot of the database by itself. So it
pays none of what a transaction costs (an ORM session, `BEGIN` and `COMMIT` round trips), nor what
SQLAlchemy's execution costs per statement (a cache key, a compiled-statement lookup, result
processing, two greenlet switches): a `Query` is a Core `SELECT` of the tables' definitions,
compiled once to asyncpg's SQL, and `Reads` runs it with the asyncpg connection of a connection
taken from the process's one pool for that statement only, then given back.

A pooled connection that the database closed is replaced as it is taken (`common.db`); one that
is dropped while its statement runs is retried once, on another connection: a read has no effect
that could happen twice. Errors are asyncpg's own (`common.errors` answers `503` for those that
mean the database is out of reach).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util.concurrency import greenlet_spawn

_DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
_ATTEMPTS = 2  # a statement whose connection was dropped under it runs once more


class Row(asyncpg.Record):  # type: ignore[misc]  # asyncpg has no type hints
    """A result row whose columns read as attributes too (`row.name`), as SQLAlchemy's rows do."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def prefixed(self, prefix: str) -> SimpleNamespace:
        """The columns named `prefix…`, named without it: one table's row among another's columns."""
        return SimpleNamespace(**{key[len(prefix) :]: value for key, value in self.items() if key.startswith(prefix)})


class Query:
    """A `SELECT` compiled once for asyncpg. Its parameters are the statement's `sa.bindparam`s, given
    by name when it runs; the literal values it holds are bound once here.

    Values go to asyncpg as they are: text, numbers, lists, UUIDs, times and bytes, which asyncpg
    encodes by the statement's parameter types (no SQLAlchemy type processing happens here).
    """

    __slots__ = ("_parameters", "sql")

    def __init__(self, statement: sa.Select[Any]) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        if "POSTCOMPILE_" in compiled.string:
            raise ValueError("a Query cannot expand lists at run time (`IN`): compare with `= ANY(...)` instead")
        literals = compiled.construct_params(_check=False)
        self.sql: str = compiled.string
        self._parameters: list[tuple[str, bool, Any]] = [
            (name, compiled.binds[name].required, literals.get(name)) for name in compiled.positiontup or ()
        ]

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        """The statement's positional arguments for `values` (by parameter name)."""
        arguments = []
        for name, required, literal in self._parameters:
            if name in values:
                arguments.append(values[name])
            elif required:
                raise TypeError(f"a value for {name!r} is required")
            else:
                arguments.append(literal)
        return arguments


Fetch = Callable[[asyncpg.Connection, str, Sequence[Any]], Awaitable[Any]]


async def _fetch_first(connection: asyncpg.Connection, sql: str, arguments: Sequence[Any]) -> Row | None:
    row: Row | None = await connection.fetchrow(sql, *arguments, record_class=Row)
    return row


async def _fetch_all(connection: asyncpg.Connection, sql: str, arguments: Sequence[Any]) -> list[Row]:
    rows: list[Row] = await connection.fetch(sql, *arguments, record_class=Row)
    return rows


def _bounded(fetch: Fetch, timeout_ms: int) -> Fetch:
    """`fetch` within a statement timeout of its own, set for its one transaction (`SET LOCAL`)."""

    async def bounded(connection: asyncpg.Connection, sql: str, arguments: Sequence[Any]) -> Any:
        async with connection.transaction():
            await connection.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            return await fetch(connection, sql, arguments)

    return bounded


class Reads:
    """Runs `Query`s outside any transaction, each on a connection taken from `engine`'s pool for it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._pool = engine.sync_engine.pool

    async def first(self, query: Query, **values: Any) -> Row | None:
        """The first row `query` finds for `values`, or None."""
        found: Row | None = await self._run(_fetch_first, query, values)
        return found

    async def all(self, query: Query, *, timeout_ms: int | None = None, **values: Any) -> list[Row]:
        """Every row `query` finds for `values`; within `timeout_ms` if given (a `QueryCanceledError` past it)."""
        fetch = _fetch_all if timeout_ms is None else _bounded(_fetch_all, timeout_ms)
        rows: list[Row] = await self._run(fetch, query, values)
        return rows

    async def _run(self, fetch: Fetch, query: Query, values: Mapping[str, Any]) -> Any:
        arguments = query.arguments(values)
        for attempt in range(1, _ATTEMPTS + 1):
            pooled: PoolProxiedConnection = await greenlet_spawn(self._pool.connect)
            driver: asyncpg.Connection = pooled.driver_connection
            try:
                found = await fetch(driver, query.sql, arguments)
            except asyncpg.PostgresError as error:
                # The server answered: the connection is sound, unless the server was ending it.
                if not driver.is_closed():
                    await _give_back(pooled)
                    raise
                await _discard(pooled, error)
                if attempt == _ATTEMPTS:
                    raise
            except (OSError, asyncpg.InterfaceError) as error:  # dropped under the statement
                await _discard(pooled, error)
                if attempt == _ATTEMPTS or not driver.is_closed():
                    raise
            except BaseException as error:  # cancelled or timed out mid-statement: its state is unknown
                await _discard(pooled, error)
                raise
            else:
                await _give_back(pooled)
                return found
        raise AssertionError("unreachable")  # pragma: no cover


async def _give_back(pooled: PoolProxiedConnection) -> None:
    # Shielded, as SQLAlchemy's own connections are: a request cancelled meanwhile cannot leak it.
    await asyncio.shield(greenlet_spawn(pooled.close))


async def _discard(pooled: PoolProxiedConnection, error: BaseException) -> None:
    # Invalidated (closed, and replaced in the pool by a new connection when next needed).
    await asyncio.shield(greenlet_spawn(pooled.invalidate, error if isinstance(error, Exception) else None))
