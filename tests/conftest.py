"""Real PostgreSQL and S3 servers for the test session, and a fresh database for every test.

The servers come from the same pinned wheels as `make run`. Each test gets its own database,
copied from a template that was migrated once, so tests are independent and fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

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


def _start_servers(root: Path) -> Servers:
    postgres = EmbeddedPostgres(root / "postgres", free_port(), FAST_UNSAFE_SETTINGS)
    s3 = EmbeddedS3(root / "s3", free_s3_port(), S3Credentials.load_or_create(root / "s3-credentials.json"))
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


@pytest.fixture
async def database_url(servers: Servers) -> AsyncIterator[str]:
    """A fresh, fully migrated database of its own for one test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await servers.admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}" OWNER "{APP_ROLE}" STRATEGY FILE_COPY')
        yield servers.database_url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def bucket(servers: Servers) -> AsyncIterator[str]:
    """An empty S3 bucket of its own for one test, removed with its objects afterwards."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    session = aioboto3.Session()
    async with session.client(**s3_client_options(servers)) as client:
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
    }


@pytest.fixture(autouse=True)
def _no_ambient_depot_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings are read from the environment: a developer's DEPOT_* variables must not leak in.
    for name in list(os.environ):
        if name.startswith("DEPOT_"):
            monkeypatch.delenv(name)
