"""One database role per service (as on AWS), made by the migrations on the real PostgreSQL.

The database here is set up as RDS sets it up: a master role that is not a superuser but may
create roles, owns the database, and runs the migrations, with the services' role passwords given
as the migration task receives them. Each service's role then uses its own schemas (and the shared
queue, for the two services that talk through it) and is refused everywhere else; the three
services, each on its own role, take an upload through validation to a verdict.

The SQL below is built from the fixed names of the schemas and tables, never from input.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from common import migrations
from common.database_roles import SERVICE_ROLES, scram_verifier
from common.migrations import MigrationSettings
from tests.conftest import Servers
from tests.integration.validator.conftest import open_depot, zip_of

MASTER = "depot_master"
DENIED = asyncpg.exceptions.InsufficientPrivilegeError


@pytest.fixture(scope="module")
def master_password(servers: Servers) -> str:
    """RDS's master user: CREATEROLE, not a superuser (roles are the server's, so one master for the module)."""
    password = secrets.token_urlsafe(18)

    async def create() -> None:
        admin = await servers.admin()
        try:
            exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", MASTER)
            verb = "ALTER" if exists else "CREATE"
            await admin.execute(f"{verb} ROLE {MASTER} LOGIN CREATEROLE NOSUPERUSER PASSWORD '{password}'")
        finally:
            await admin.close()

    asyncio.run(create())
    return password


@pytest.fixture
async def owned_database(servers: Servers, master_password: str) -> AsyncIterator[str]:
    """An empty database owned by the master, as RDS creates it; its URL as the master."""
    name = f"roles_{uuid.uuid4().hex[:12]}"
    admin = await servers.admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER {MASTER} TEMPLATE template0')
    finally:
        await admin.close()
    try:
        yield as_role(servers, name, MASTER, master_password)
    finally:
        admin = await servers.admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def as_role(servers: Servers, database: str, role: str, password: str) -> str:
    return servers.postgres.dsn(database, role, password).replace("postgresql://", "postgresql+asyncpg://")


def new_passwords() -> dict[str, str]:
    return {role.service: secrets.token_urlsafe(24) for role in SERVICE_ROLES}


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))


ROLE_OF = {role.service: role.name for role in SERVICE_ROLES}
TABLES = {
    "auth": "auth.users",
    "packages": "packages.packages",
    "validation": "validation.reports",
    "queue": "queue.jobs",
}


async def test_each_service_role_uses_its_own_schemas_and_is_refused_the_others(
    servers: Servers, owned_database: str
) -> None:
    passwords = new_passwords()
    await migrations.upgrade(owned_database, service_roles=passwords)
    database = owned_database.rsplit("/", 1)[1]
    for role in SERVICE_ROLES:
        connection = await connect(as_role(servers, database, role.name, passwords[role.service]))
        try:
            for schema, table in TABLES.items():
                select = f"SELECT count(*) FROM {table}"  # noqa: S608 - fixed names
                if schema in role.schemas:
                    await connection.fetchval(select)
                    column = await first_column(connection, table)
                    async with connection.transaction():  # writes too (nothing matches)
                        await connection.execute(f"UPDATE {table} SET {column} = {column} WHERE false")  # noqa: S608
                        await connection.execute(f"DELETE FROM {table} WHERE false")  # noqa: S608
                else:
                    with pytest.raises(DENIED):
                        await connection.fetchval(select)
            for schema in role.schemas:
                with pytest.raises(DENIED):
                    await connection.execute(f"CREATE TABLE {schema}.intruder (id int)")
                with pytest.raises(DENIED):
                    await connection.fetchval(f"SELECT version_num FROM {schema}.alembic_version")  # noqa: S608
        finally:
            await connection.close()


async def first_column(connection: asyncpg.Connection, table: str) -> str:
    schema, name = table.split(".")
    column: str = await connection.fetchval(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 "
        "ORDER BY ordinal_position LIMIT 1", schema, name,
    )  # fmt: skip
    return column


async def test_running_again_takes_new_passwords_and_takes_back_stray_grants(
    servers: Servers, owned_database: str, master_password: str
) -> None:
    await migrations.upgrade(owned_database, service_roles=new_passwords())
    database = owned_database.rsplit("/", 1)[1]
    master = await connect(owned_database)
    try:  # a grant someone made by hand
        await master.execute(f"GRANT USAGE ON SCHEMA auth TO {ROLE_OF['validator_service']}")
        await master.execute(f"GRANT SELECT ON auth.users TO {ROLE_OF['validator_service']}")
    finally:
        await master.close()
    old = new_passwords()
    await migrations.upgrade(owned_database, service_roles=old)
    rotated = {**old, "validator_service": secrets.token_urlsafe(24)}
    await migrations.upgrade(owned_database, service_roles=rotated)

    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        await connect(as_role(servers, database, ROLE_OF["validator_service"], old["validator_service"]))
    validator = await connect(as_role(servers, database, ROLE_OF["validator_service"], rotated["validator_service"]))
    try:
        with pytest.raises(DENIED):
            await validator.fetchval("SELECT count(*) FROM auth.users")
        assert await validator.fetchval("SELECT count(*) FROM validation.reports") == 0
    finally:
        await validator.close()


def test_the_migration_task_takes_the_three_passwords_or_none() -> None:
    variables = {f"{role.service}_database_password": f"pw-{role.name}" for role in SERVICE_ROLES}
    settings = MigrationSettings(**variables)
    assert settings.service_role_passwords == {role.service: f"pw-{role.name}" for role in SERVICE_ROLES}
    assert MigrationSettings().service_role_passwords is None, "locally, one role for all"
    with pytest.raises(ValueError, match="all three"):
        MigrationSettings(auth_service_database_password="only-one")


def test_passwords_reach_the_server_as_scram_verifiers() -> None:
    verifier = scram_verifier("pencil", salt=bytes.fromhex("00" * 16), iterations=4096)
    assert verifier.startswith("SCRAM-SHA-256$4096:AAAAAAAAAAAAAAAAAAAAAA==$")
    assert "pencil" not in verifier
    assert scram_verifier("pencil") != scram_verifier("pencil"), "a new salt each time"
    with pytest.raises(ValueError, match="ASCII"):
        scram_verifier("pässword")


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_the_three_services_each_on_its_own_role_take_an_upload_to_a_verdict(
    servers: Servers, owned_database: str, bucket: str, tmp_path: Path
) -> None:
    passwords = new_passwords()
    await migrations.upgrade(owned_database, service_roles=passwords)
    database = owned_database.rsplit("/", 1)[1]
    urls = {role.service: as_role(servers, database, role.name, passwords[role.service]) for role in SERVICE_ROLES}
    async with open_depot(servers, owned_database, bucket, tmp_path, service_urls=urls) as depot:
        await depot.add_user("sam", groups=("readers",))  # auth_service as depot_auth
        await depot.create("model", read_groups=["readers"])
        data = zip_of({"depot.json": b'{"name": "Model", "version": "1.0.0"}', "weights/a.txt": b"hello" * 100})
        await depot.upload("model", "1.0.0", data, filename="model.zip")
        version = await depot.decided("model", "1.0.0")  # the job and the verdict through the queue
        assert version["status"] == "available", version
        report = await depot.report("model", "1.0.0")
        assert report.status_code == 200, report.text
        assert report.json()["status"] == "passed"
        # The validator reads the access list from package_service and the user from auth_service.
        asked = {"package": "model", "action": "read", "subject": {"username": "sam"}}
        answer = await depot.validator.post("/validate", json=asked, headers=depot.callers.service)
        assert answer.status_code == 200, answer.text
        assert answer.json()["allowed"] is True, answer.json()
        # Each service's pool is open as its own role, none as the owner.
        admin = await servers.admin()
        try:
            sessions = await admin.fetch(
                "SELECT DISTINCT application_name, usename FROM pg_stat_activity "
                "WHERE datname = $1 AND application_name LIKE 'depot-%'", database,
            )  # fmt: skip
        finally:
            await admin.close()
        assert {(row["application_name"], row["usename"]) for row in sessions} == {
            (f"depot-{role.service}", role.name) for role in SERVICE_ROLES
        }
