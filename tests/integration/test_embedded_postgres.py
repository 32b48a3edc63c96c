"""The embedded PostgreSQL of `make run` and the tests: `start` returns once the server accepts sessions.

A server listens before it accepts: while its startup process runs (longer on a busy machine, and
after a crash while it replays its log) it refuses every session with "the database system is
starting up" (57P03). A second `make run` that connected as soon as the port was open died there.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest

from devstack.postgres import BIN, FAST_UNSAFE_SETTINGS, EmbeddedPostgres, wait_until_accepting
from devstack.processes import free_port
from tests.conftest import server_root
from tests.helpers import eventually


@pytest.fixture
def initialised() -> Iterator[EmbeddedPostgres]:
    """A server whose data folder exists, stopped; stopped again after the test."""
    with server_root() as root:
        # A standby without hot standby refuses sessions with 57P03 for as long as it stays one:
        # a server that is starting up, held in that state until the test promotes it.
        postgres = EmbeddedPostgres(root / "postgres", free_port(), {**FAST_UNSAFE_SETTINGS, "hot_standby": "off"})
        postgres.start()
        postgres.stop()
        try:
            yield postgres
        finally:
            postgres.stop()


async def refused_while_starting_up(postgres: EmbeddedPostgres) -> bool:
    """Whether the server listens but refuses sessions as one that is starting up does."""
    try:
        connection = await asyncpg.connect(postgres.dsn(), timeout=5)
    except asyncpg.exceptions.CannotConnectNowError:
        return True
    except OSError:
        return False  # not listening yet after all
    await connection.close()
    pytest.fail("the standby accepted a session")


def test_start_returns_only_once_the_server_accepts_sessions(initialised: EmbeddedPostgres) -> None:
    postgres = initialised
    (postgres.data / "standby.signal").touch()
    returned = threading.Event()

    async def promote_once_refused() -> None:
        try:
            await eventually(lambda: refused_while_starting_up(postgres))
            await asyncio.sleep(1)  # what `start` did before: return as soon as the port was open
            assert not returned.is_set(), "start returned while the server refused sessions"
            # The standby finishes its recovery and accepts sessions: now `start` may return.
            promote = [str(BIN / "pg_ctl"), "promote", "-D", str(postgres.data), "--no-wait"]
            owner = postgres.data.owner()
            await asyncio.to_thread(subprocess.run, promote, user=owner, check=True, capture_output=True)
        except BaseException:
            postgres.stop()  # `start` then fails at once instead of waiting out its timeout
            raise

    # `start` runs here, not on a worker thread: the server is tied to the thread that spawned it.
    with ThreadPoolExecutor(1) as pool:
        promoter = pool.submit(asyncio.run, promote_once_refused())
        try:
            postgres.start(timeout=120)
        finally:
            returned.set()
            promoter.result()
    assert asyncio.run(primary(postgres))


async def primary(postgres: EmbeddedPostgres) -> bool:
    connection = await asyncpg.connect(postgres.dsn())
    try:
        return bool(await connection.fetchval("SELECT NOT pg_is_in_recovery()"))
    finally:
        await connection.close()


def test_waiting_gives_up_with_the_reason(initialised: EmbeddedPostgres) -> None:
    postgres = initialised
    with pytest.raises(TimeoutError, match="does not accept connections after 1 s"):
        asyncio.run(wait_until_accepting(postgres.dsn(), within=1))  # nothing listens: refused until the deadline

    postgres.start()
    wrong = postgres.dsn(password="not-the-password")
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        asyncio.run(wait_until_accepting(wrong, within=60))  # at once: waiting would not help
