"""One database role per service, granted only the schemas that service uses.

On AWS each service connects as its own role, never as the database's owner: a service that is
compromised, or buggy, can touch its own tables and the shared `queue` (the channel between
package_service and the validator), and nothing else. The migration command, which runs as the
owner, creates the roles, sets their passwords and grants them their schemas in the transaction
that migrates (`python -m common.migrations upgrade` with the roles' passwords set): every run
leaves the grants exactly as `SERVICE_ROLES` says, so the tables a migration adds are covered and a
schema taken from a role is revoked. Locally (`make run`, `docker compose`, the tests) one role owns
everything and none of this runs.

Passwords reach PostgreSQL as SCRAM-SHA-256 verifiers computed here, as libpq's `\\password` does:
the password itself never crosses the wire nor can appear in a server log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True)
class ServiceRole:
    """A service's login role and the schemas it may read and write."""

    service: str
    name: str
    schemas: tuple[str, ...]


SERVICE_ROLES = (
    ServiceRole("auth_service", "depot_auth", ("auth",)),
    ServiceRole("package_service", "depot_packages", ("packages", "queue")),
    ServiceRole("validator_service", "depot_validator", ("validation", "queue")),
)

_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
_SEQUENCE_PRIVILEGES = "USAGE, SELECT"
_SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores for `password` (RFC 5802 / RFC 7677).

    ASCII passwords only: the client normalises others with SASLprep, which is not done here, and
    the generated passwords this is for are ASCII.
    """
    if not password or not password.isascii():
        raise ValueError("a role's password must be non-empty ASCII")
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _ident(name: str) -> str:
    # Role and schema names come from SERVICE_ROLES and the migrations, never from input; quote anyway.
    return '"' + name.replace('"', '""') + '"'


async def ensure_service_roles(
    connection: AsyncConnection, passwords: Mapping[str, str], managed_schemas: Sequence[str]
) -> None:
    """Create or update every service's role and make its grants exactly its schemas, in the caller's transaction.

    `passwords` maps each service of `SERVICE_ROLES` to its role's password (all are required);
    `managed_schemas` are Depot's schemas, of which a role keeps only its own: privileges on the
    others are revoked. Needs a connection as the schemas' owner with CREATEROLE (RDS's master user).
    Idempotent: run it after every migration.
    """
    missing = sorted({role.service for role in SERVICE_ROLES} - set(passwords))
    if missing:
        raise ValueError(f"no password for the database role of {missing}")
    database = (await connection.execute(text("SELECT current_database()"))).scalar_one()
    existing_schemas = set(
        (await connection.execute(text("SELECT nspname FROM pg_namespace WHERE nspname = ANY(:names)"),
                                  {"names": list(managed_schemas)})).scalars()
    )  # fmt: skip
    for role in SERVICE_ROLES:
        name = _ident(role.name)
        exists = await connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": role.name})
        if exists.first() is None:
            await connection.exec_driver_sql(f"CREATE ROLE {name} LOGIN")
        # The verifier is base64, `$` and `:` only: safe as a literal, and a literal is what DDL takes
        # (sent as it is: SQLAlchemy's text() would read `=:abc` in it as a bind parameter).
        verifier = scram_verifier(passwords[role.service])
        await connection.exec_driver_sql(f"ALTER ROLE {name} LOGIN PASSWORD '{verifier}'")
        await connection.exec_driver_sql(f"GRANT CONNECT ON DATABASE {_ident(database)} TO {name}")
        for schema in sorted(existing_schemas):
            if schema in role.schemas:
                await _grant(connection, name, _ident(schema))
            else:
                await _revoke(connection, name, _ident(schema))


async def _grant(connection: AsyncConnection, role: str, schema: str) -> None:
    for statement in (
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT {_TABLE_PRIVILEGES} ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"GRANT {_SEQUENCE_PRIVILEGES} ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        # Tables a later migration creates as this same owner are the role's at once, even if that
        # migration was run without the roles' passwords.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT {_TABLE_PRIVILEGES} ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT {_SEQUENCE_PRIVILEGES} ON SEQUENCES TO {role}",
    ):
        await connection.exec_driver_sql(statement)
    # Alembic's bookkeeping is the migrations', not the service's.
    versions = await connection.execute(text("SELECT to_regclass(:table)"), {"table": f"{schema}.alembic_version"})
    if versions.scalar_one() is not None:
        await connection.exec_driver_sql(f"REVOKE ALL ON TABLE {schema}.alembic_version FROM {role}")


async def _revoke(connection: AsyncConnection, role: str, schema: str) -> None:
    for statement in (
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON TABLES FROM {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON SEQUENCES FROM {role}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}",
        f"REVOKE ALL ON SCHEMA {schema} FROM {role}",
    ):
        await connection.exec_driver_sql(statement)
