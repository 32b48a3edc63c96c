"""Alembic for every schema: one history per component, each with its version table in its own schema.

`python -m common.migrations upgrade` migrates everything (what `make migrate` runs);
`downgrade`, `current` and `revision` work per component. The shared `queue` schema has its
history here in `common/queue_migrations`; each service keeps its own in `<service>/migrations`.
"""

from __future__ import annotations

import argparse
import asyncio
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData, text
from sqlalchemy.ext.asyncio import create_async_engine

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


async def upgrade(database_url: str, components: list[str] | None = None, revision: str = "head") -> None:
    """Upgrade components in order, in one transaction, holding a lock so that two runs never overlap."""
    await _run(database_url, _select(components), lambda config: command.upgrade(config, revision))


async def downgrade(database_url: str, components: list[str] | None = None, revision: str = "base") -> None:
    """Downgrade components in reverse order, in one transaction."""
    chosen = list(reversed(_select(components)))
    await _run(database_url, chosen, lambda config: command.downgrade(config, revision))


Action = Callable[[Config], None]


def _apply(action: Action, component: Component, connection: Connection) -> None:
    action(alembic_config(component, connection))


async def _run(database_url: str, components: list[Component], action: Action) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            for component in components:
                await connection.run_sync(partial(_apply, action, component))
    finally:
        await engine.dispose()


async def _current(database_url: str) -> None:
    engine = create_async_engine(database_url)
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
    url = load_settings(CommonSettings).database_url.get_secret_value()
    if args.command == "upgrade":
        asyncio.run(upgrade(url, args.components, args.revision))
    elif args.command == "downgrade":
        asyncio.run(downgrade(url, args.components, args.revision))
    else:
        asyncio.run(_current(url))


if __name__ == "__main__":
    main()
