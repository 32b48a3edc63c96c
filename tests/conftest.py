"""Real PostgreSQL and S3 servers for the test session, and a fresh database for every test.

The servers come from the same pinned wheels as `make run`. Each test gets its own database,
copied from a template that was migrated once, so tests are independent and fast: the copy for
the next test is made while the current one runs, and dropped after it in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aioboto3
import asyncpg
import pytest
from botocore.config import Config

from common import migrations
from devstack.postgres import FAST_UNSAFE_SETTINGS, EmbeddedPostgres, ensure_role_and_database
from devstack.processes import free_port
from devstack.s3 import EmbeddedS3, S3Credentials, free_s3_port

APP_ROLE = "depot"
TEMPLATE = "depot_template"
T = TypeVar("T")
# One session for the tests' own S3 clients: a new session parses botocore's service models again,
# about 0.1 s a client, which every test that has a bucket would pay.
S3_SESSION = aioboto3.Session()


@dataclass(frozen=True)
class Servers:
    postgres: EmbeddedPostgres
    s3: EmbeddedS3
    app_password: str

    def database_url(self, database: str) -> str:
        """The services' (unprivileged) URL for one database."""
        return self.postgres.dsn(database, APP_ROLE, self.app_password).replace(
            "postgresql://", "postgresql+asyncpg://"
        )

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.postgres.dsn())


def free_s3_block() -> int:
    """A free SeaweedFS port block (`free_s3_port`) of this pytest-xdist worker's own share. Workers
    start, stop and restart servers at the same time: a block whose server another worker stopped for
    a moment (an outage test) looks free, and must not be taken."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return free_s3_port(share=(int(worker.removeprefix("gw")), count))


def _start_servers(root: Path) -> Servers:
    postgres = EmbeddedPostgres(root / "postgres", free_port(), FAST_UNSAFE_SETTINGS)
    s3 = EmbeddedS3(root / "s3", free_s3_block(), S3Credentials.load_or_create(root / "s3-credentials.json"))
    postgres.start()
    s3.start()
    password = uuid.uuid4().hex
    asyncio.run(ensure_role_and_database(postgres.dsn(), role=APP_ROLE, password=password, database=TEMPLATE))
    servers = Servers(postgres, s3, password)
    asyncio.run(migrations.upgrade(servers.database_url(TEMPLATE)))
    return servers


@contextlib.contextmanager
def server_root() -> Iterator[Path]:
    """A folder for real servers, outside pytest's own temporary tree.

    PostgreSQL runs as an unprivileged user, which must be able to walk down to its data; pytest
    makes its tree private again whenever another pytest session starts.
    """
    root = Path(tempfile.mkdtemp(prefix="depot-test-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    with server_root() as root:
        started = _start_servers(root)
        try:
            yield started
        finally:
            started.s3.stop()
            started.postgres.stop()


class Databases:
    """Copies of the template, one always made ahead, on a thread and an event loop of their own.

    A copy takes a quarter of a second and a test rarely less: made while the previous test runs
    (and dropped while the next one does), it costs a test nothing on a machine with two cores.
    """

    def __init__(self, servers: Servers) -> None:
        self._servers = servers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test databases", daemon=True)
        self._thread.start()
        self._lock = asyncio.Lock()  # bound to the thread's loop, where it is first used
        self._next = self._submit(self._create())
        self._dropping: list[Future[None]] = []

    async def take(self) -> str:
        """A fresh database's name; the copy for the next caller is started at once."""
        ready, self._next = self._next, self._submit(self._create())
        return await asyncio.wrap_future(ready)

    def drop(self, name: str) -> None:
        """Drop a database in the background (connections left to it are closed)."""
        self._dropping = [future for future in self._dropping if not future.done()]
        self._dropping.append(self._submit(self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))

    def close(self) -> None:
        """Wait for the work under way, drop the spare copy, stop the thread."""
        try:
            spare = self._next.result()
            self.drop(spare)
            for future in self._dropping:
                future.result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _submit(self, work: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    async def _create(self) -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        await self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}" OWNER "{APP_ROLE}" STRATEGY FILE_COPY')
        return name

    async def _execute(self, statement: str) -> None:
        async with self._lock:  # one statement at a time, as when the tests made them themselves
            admin = await self._servers.admin()
            try:
                await admin.execute(statement)
            finally:
                await admin.close()


@pytest.fixture(scope="session")
def databases(servers: Servers) -> Iterator[Databases]:
    made = Databases(servers)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
async def database_url(servers: Servers, databases: Databases) -> AsyncIterator[str]:
    """A fresh, fully migrated database of its own for one test."""
    name = await databases.take()
    try:
        yield servers.database_url(name)
    finally:
        databases.drop(name)


@pytest.fixture
async def bucket(servers: Servers) -> AsyncIterator[str]:
    """An empty S3 bucket of its own for one test, removed with its objects afterwards."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    async with S3_SESSION.client(**s3_client_options(servers)) as client:
        await client.create_bucket(Bucket=name)
        try:
            yield name
        finally:
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=name):
                for item in page.get("Contents", []):
                    await client.delete_object(Bucket=name, Key=item["Key"])
            await client.delete_bucket(Bucket=name)


def s3_client_options(servers: Servers) -> dict[str, object]:
    """Keyword arguments for an aioboto3 S3 client on the test server."""
    return {
        "service_name": "s3",
        "endpoint_url": servers.s3.endpoint_url,
        "aws_access_key_id": servers.s3.credentials.access_key,
        "aws_secret_access_key": servers.s3.credentials.secret_key,
        "region_name": "us-east-1",
        "config": Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        "verify": False,  # plain HTTP: no CA bundle loaded for nothing (20-40 ms a client), as in common.s3
    }


@pytest.fixture(autouse=True)
def _no_ambient_depot_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings are read from the environment: a developer's DEPOT_* variables must not leak in.
    for name in list(os.environ):
        if name.startswith("DEPOT_"):
            monkeypatch.delenv(name)
