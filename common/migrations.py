"""Alembic for every schema: one history per component, each with its version table in its own schema.

`python -m common.migrations upgrade` migrates everything (what `make migrate` runs);
`downgrade`, `current` and `revision` work per component. The shared `queue` schema has its
history here in `common/queue_migrations`; each service keeps its own in `<service>/migrations`.

With the services' database passwords set (`DEPOT_AUTH_SERVICE_DATABASE_PASSWORD` and the other two,
as on AWS), `upgrade` also creates or updates each service's own role and its grants, in the same
transaction (`common.database_roles`). With `DEPOT_DATABASE_SSL_ROOT_CERT`, the connection checks
the server's certificate as the services' do.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from pydantic import SecretStr, model_validator
from sqlalchemy import Connection, MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from common.database_roles import SERVICE_ROLES, ensure_service_roles
from common.db import database_tls
from common.settings import CommonSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Component:
    name: str
    schema: str
    folder: Path


# Upgrade order; downgrades run in reverse.
COMPONENTS = (
    Component("queue", "queue", ROOT / "common" / "queue_migrations"),
    Component("auth", "auth", ROOT / "auth_service" / "migrations"),
    Component("packages", "packages", ROOT / "package_service" / "migrations"),
    Component("validation", "validation", ROOT / "validator_service" / "migrations"),
)
_LOCK_ID = zlib.crc32(b"depot-migrations")


class MigrationSettings(CommonSettings):
    """The migration command's settings: the database as its owner, and the services' role passwords (AWS)."""

    auth_service_database_password: SecretStr | None = None
    package_service_database_password: SecretStr | None = None
    validator_service_database_password: SecretStr | None = None

    @model_validator(mode="after")
    def _all_role_passwords_or_none(self) -> MigrationSettings:
        given = [password is not None for password in self._role_passwords().values()]
        if any(given) and not all(given):
            raise ValueError("set the database passwords of all three services' roles, or none")
        return self

    def _role_passwords(self) -> dict[str, SecretStr | None]:
        return {role.service: getattr(self, f"{role.service}_database_password") for role in SERVICE_ROLES}

    @property
    def service_role_passwords(self) -> dict[str, str] | None:
        """Each service's role password, when the roles are to be managed (None: one role for all, as locally)."""
        passwords = self._role_passwords()
        if any(password is None for password in passwords.values()):
            return None
        return {service: password.get_secret_value() for service, password in passwords.items() if password}


def alembic_config(component: Component, connection: Connection | None = None) -> Config:
    """An Alembic config for one component, optionally bound to an open connection."""
    config = Config()
    config.set_main_option("path_separator", "os")
    config.set_main_option("script_location", str(component.folder))
    config.set_main_option("version_locations", str(component.folder / "versions"))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["component"] = component
    config.attributes["connection"] = connection
    return config


def run_env(metadata: MetaData | None = None) -> None:
    """The body of every `env.py`: run this component's migrations on the connection given."""
    config = context.config
    component: Component = config.attributes["component"]
    connection: Connection | None = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `python -m common.migrations`, which provides the connection")
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{component.schema}"'))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=component.schema,
        include_schemas=False,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _select(names: list[str] | None) -> list[Component]:
    if not names:
        return list(COMPONENTS)
    by_name = {component.name: component for component in COMPONENTS}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise SystemExit(f"unknown component(s) {unknown}; known: {sorted(by_name)}")
    return [component for component in COMPONENTS if component.name in names]


async def upgrade(
    database_url: str, components: list[str] | None = None, revision: str = "head", *,
    tls: ssl.SSLContext | None = None, service_roles: Mapping[str, str] | None = None,
) -> None:  # fmt: skip
    """Upgrade components in order, in one transaction, holding a lock so that two runs never overlap.

    With `service_roles` (each service's role password), the services' roles and grants are then
    made right in the same transaction (`common.database_roles.ensure_service_roles`).
    """
    await _run(
        database_url, _select(components), lambda config: command.upgrade(config, revision),
        tls=tls, service_roles=service_roles,
    )  # fmt: skip


async def downgrade(
    database_url: str, components: list[str] | None = None, revision: str = "base", *,
    tls: ssl.SSLContext | None = None,
) -> None:  # fmt: skip
    """Downgrade components in reverse order, in one transaction."""
    chosen = list(reversed(_select(components)))
    await _run(database_url, chosen, lambda config: command.downgrade(config, revision), tls=tls)


Action = Callable[[Config], None]


def _apply(action: Action, component: Component, connection: Connection) -> None:
    action(alembic_config(component, connection))


def _engine(database_url: str, tls: ssl.SSLContext | None) -> AsyncEngine:
    return create_async_engine(database_url, connect_args={} if tls is None else {"ssl": tls})


async def _run(
    database_url: str, components: list[Component], action: Action, *,
    tls: ssl.SSLContext | None = None, service_roles: Mapping[str, str] | None = None,
) -> None:  # fmt: skip
    engine = _engine(database_url, tls)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            for component in components:
                await connection.run_sync(partial(_apply, action, component))
            if service_roles is not None:
                await ensure_service_roles(connection, service_roles, [c.schema for c in COMPONENTS])
    finally:
        await engine.dispose()


async def _current(database_url: str, tls: ssl.SSLContext | None = None) -> None:
    engine = _engine(database_url, tls)
    try:
        async with engine.connect() as connection:
            for component in COMPONENTS:
                await connection.run_sync(partial(_apply, command.current, component))
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common.migrations", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="upgrade components (all by default)")
    up.add_argument("components", nargs="*")
    up.add_argument("--revision", default="head")
    down = sub.add_parser("downgrade", help="downgrade components (all by default)")
    down.add_argument("components", nargs="*")
    down.add_argument("--revision", default="base")
    sub.add_parser("current", help="show each component's revision")
    new = sub.add_parser("revision", help="write a new, empty migration for one component")
    new.add_argument("component")
    new.add_argument("-m", "--message", required=True)
    args = parser.parse_args(argv)

    if args.command == "revision":
        (component,) = _select([args.component])
        command.revision(alembic_config(component), message=args.message)
        return
    settings = load_settings(MigrationSettings)
    url, tls = settings.database_url.get_secret_value(), database_tls(settings)
    if args.command == "upgrade":
        roles = settings.service_role_passwords
        asyncio.run(upgrade(url, args.components, args.revision, tls=tls, service_roles=roles))
    elif args.command == "downgrade":
        asyncio.run(downgrade(url, args.components, args.revision, tls=tls))
    else:
        asyncio.run(_current(url, tls))


if __name__ == "__main__":
    main()
