"""Every Alembic history goes up, down and up again on a real, empty database."""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from common import migrations
from tests.conftest import APP_ROLE, Servers

SCHEMAS = {component.schema for component in migrations.COMPONENTS}


@pytest.fixture
async def empty_database(servers: Servers) -> AsyncIterator[str]:
    name = f"empty_{uuid.uuid4().hex[:12]}"
    admin = await servers.admin()
    await admin.execute(f'CREATE DATABASE "{name}" OWNER "{APP_ROLE}"')
    try:
        yield name
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def tables(servers: Servers, database: str) -> set[str]:
    connection = await asyncpg.connect(servers.postgres.dsn(database))
    try:
        rows = await connection.fetch(
            "SELECT table_schema || '.' || table_name AS name FROM information_schema.tables "
            "WHERE table_schema = ANY($1::text[])",
            list(SCHEMAS),
        )
    finally:
        await connection.close()
    return {row["name"] for row in rows}


async def test_up_down_up(servers: Servers, empty_database: str) -> None:
    url = servers.database_url(empty_database)
    await migrations.upgrade(url)
    after_up = await tables(servers, empty_database)
    assert {f"{schema}.alembic_version" for schema in SCHEMAS} <= after_up
    assert "queue.jobs" in after_up

    await migrations.downgrade(url)
    after_down = await tables(servers, empty_database)
    assert "queue.jobs" not in after_down
    assert after_down == {f"{schema}.alembic_version" for schema in SCHEMAS}

    await migrations.upgrade(url)
    assert await tables(servers, empty_database) == after_up


async def test_concurrent_upgrades_do_not_collide(servers: Servers, empty_database: str) -> None:
    url = servers.database_url(empty_database)
    await asyncio.gather(*(migrations.upgrade(url) for _ in range(3)))
    assert "queue.jobs" in await tables(servers, empty_database)


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "common.migrations", *args, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_command_line_upgrades_and_reports(servers: Servers, empty_database: str) -> None:
    env = {"DEPOT_DATABASE_URL": servers.database_url(empty_database), "PATH": "/usr/bin:/bin"}
    code, _, err = await run_cli("upgrade", env=env)
    assert code == 0, err
    code, out, err = await run_cli("current", env=env)
    assert code == 0, err
    assert out.count("(head)") == len(migrations.COMPONENTS)


async def test_invalid_settings_stop_the_command_with_a_clear_message() -> None:
    code, _, err = await run_cli("upgrade", env={"DEPOT_DATABASE_URL": "mysql://x", "PATH": "/usr/bin:/bin"})
    assert code == 2
    assert "DEPOT_DATABASE_URL: Value error, must be a postgresql:// URL" in err
    assert "Traceback" not in err


def test_unknown_component_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown component"):
        asyncio.run(migrations.upgrade("postgresql+asyncpg://nowhere/db", ["nonsense"]))


@pytest.mark.parametrize("component", migrations.COMPONENTS, ids=lambda c: c.name)
async def test_models_match_their_migrations(database_url: str, component: migrations.Component) -> None:
    """The tables the code declares are the tables the migrations build (no drift either way)."""
    metadata = importlib.import_module(METADATA_MODULES[component.name]).metadata

    def differences(connection: Connection) -> list[Any]:
        def in_schema(name: str | None, kind: str, _: Any) -> bool:
            return name == component.schema if kind == "schema" else name != "alembic_version"

        options = {"include_schemas": True, "compare_type": True, "include_name": in_schema}
        return list(compare_metadata(MigrationContext.configure(connection, opts=options), metadata))

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()


METADATA_MODULES = {
    "queue": "common.queue",
    "auth": "auth_service.models",
    "packages": "package_service.models",
    "validation": "validator_service.models",
}
