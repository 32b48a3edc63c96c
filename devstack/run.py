"""`make run`: the whole registry on one machine with nothing but Python.

Starts an embedded PostgreSQL and a SeaweedFS S3 server (unless the environment names external
ones), creates the bucket, migrates, starts the three services as separate uvicorn processes and
the front door that routes like the ALB, prints where everything is, and on Ctrl-C or SIGTERM
stops every child. Data lives under `DEPOT_DATA_DIR` (default `.depot`) and survives restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO, Any

import aioboto3
import httpx
from botocore.config import Config
from botocore.exceptions import ClientError

from auth_service.cli import service_token
from auth_service.settings import AuthSettings
from common import migrations
from devstack.postgres import EmbeddedPostgres, ensure_role_and_database
from devstack.processes import spawn, stop, wait_for_free_ports, wait_for_port
from devstack.s3 import EmbeddedS3, S3Credentials

SERVICES = (
    # (name, ASGI factory, path prefix, port offset from DEPOT_PORT)
    ("auth_service", "auth_service.app:create_app", "/auth", 1),
    ("package_service", "package_service.app:create_app", "/packages", 2),
    ("validator_service", "validator_service.app:create_app", "/validate", 3),
)
WEB = ("web_service", "web_service.app:create_app", 4)
"""The pages: every path the three prefixes do not take (the ALB's default action)."""
APP_ROLE = "depot"
SERVICE_ACCOUNT = "depot-service"
DATABASE = "depot"
READY_TIMEOUT_SECONDS = 90.0


class Stop(Exception):
    """A signal asked us to stop."""


@dataclass(frozen=True)
class Layout:
    """Where things are: ports and folders, from the environment or the defaults."""

    data_dir: Path
    host: str
    port: int
    postgres_port: int
    s3_port: int

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Layout:
        port = int(env.get("DEPOT_PORT", "8080"))
        return cls(
            data_dir=Path(env.get("DEPOT_DATA_DIR", ".depot")).resolve(),
            host="127.0.0.1",
            port=port,
            postgres_port=int(env.get("DEPOT_POSTGRES_PORT", "54329")),
            s3_port=int(env.get("DEPOT_S3_PORT", "8333")),
        )

    def service_port(self, offset: int) -> int:
        return self.port + offset


def say(message: str) -> None:
    """One line of `make run`'s own output."""
    print(f"depot | {message}", flush=True)


def _load_secrets(path: Path) -> dict[str, str]:
    # Generated once per data folder and kept with it (mode 0600), never in the repository.
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    values = {"database_password": secrets.token_urlsafe(24)}
    path.touch(mode=0o600)
    path.write_text(json.dumps(values))
    return values


@contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    # The kernel drops this lock when we die, so a crashed run never blocks the next one.
    handle = (data_dir / "run.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(f"another `make run` is using {data_dir}") from None
    try:
        yield
    finally:
        handle.close()


def _start_database(layout: Layout, env: dict[str, str], stack: ExitStack) -> str:
    if "DEPOT_DATABASE_URL" in os.environ:
        say("PostgreSQL: using DEPOT_DATABASE_URL from the environment")
        return os.environ["DEPOT_DATABASE_URL"]
    password = _load_secrets(layout.data_dir / "secrets.json")["database_password"]
    postgres = EmbeddedPostgres(layout.data_dir / "postgres", layout.postgres_port)
    say(f"PostgreSQL: starting on 127.0.0.1:{layout.postgres_port} (data in {postgres.data})")
    # After a crash the server replays its log before it accepts anyone: give it the same time as the services.
    postgres.start(timeout=READY_TIMEOUT_SECONDS)
    stack.callback(_announce_stop, "PostgreSQL", postgres.stop)
    asyncio.run(ensure_role_and_database(postgres.dsn(), role=APP_ROLE, password=password, database=DATABASE))
    url = postgres.dsn(DATABASE, APP_ROLE, password).replace("postgresql://", "postgresql+asyncpg://")
    env["DEPOT_DATABASE_URL"] = url
    return url


def _provision_service_account(layout: Layout, env: dict[str, str]) -> None:
    # The other services call package_service and auth_service as this account.
    auth_port = layout.service_port(1)
    env.setdefault("DEPOT_AUTH_JWKS_URL", f"http://{layout.host}:{auth_port}/auth/.well-known/jwks.json")
    env.setdefault("DEPOT_AUTH_URL", f"http://{layout.host}:{auth_port}")
    env.setdefault("DEPOT_PACKAGES_URL", f"http://{layout.host}:{layout.service_port(2)}")
    if "DEPOT_SERVICE_TOKEN" in os.environ:
        return
    secrets_path = layout.data_dir / "secrets.json"
    stored = _load_secrets(secrets_path)
    settings = AuthSettings(database_url=env["DEPOT_DATABASE_URL"], data_dir=layout.data_dir)
    token = asyncio.run(service_token(settings, SERVICE_ACCOUNT, stored.get("service_token")))
    if token != stored.get("service_token"):
        secrets_path.write_text(json.dumps(stored | {"service_token": token}))
        say(f"provisioned the service account {SERVICE_ACCOUNT!r}")
    env["DEPOT_SERVICE_TOKEN"] = token


def _web_settings(layout: Layout, env: dict[str, str]) -> None:
    # web_service calls the three APIs directly and seals its sessions with a key kept with the data.
    env.setdefault("DEPOT_VALIDATE_URL", f"http://{layout.host}:{layout.service_port(3)}")
    env.setdefault("DEPOT_PUBLIC_URL", f"http://{layout.host}:{layout.port}")
    if "DEPOT_SESSION_KEY" not in os.environ:
        secrets_path = layout.data_dir / "secrets.json"
        stored = _load_secrets(secrets_path)
        if "session_key" not in stored:
            stored["session_key"] = secrets.token_urlsafe(48)
            secrets_path.write_text(json.dumps(stored))
        env["DEPOT_SESSION_KEY"] = stored["session_key"]


def _start_s3(layout: Layout, env: dict[str, str], stack: ExitStack) -> None:
    if "DEPOT_S3_ENDPOINT_URL" in os.environ:
        say(f"S3: using {os.environ['DEPOT_S3_ENDPOINT_URL']} from the environment")
    else:
        credentials = S3Credentials.load_or_create(layout.data_dir / "s3" / "credentials.json")
        s3 = EmbeddedS3(layout.data_dir / "s3", layout.s3_port, credentials)
        say(f"S3: starting SeaweedFS on {s3.endpoint_url} (data in {s3.root / 'data'})")
        s3.start()
        stack.callback(_announce_stop, "S3", s3.stop)
        env.setdefault("DEPOT_S3_ENDPOINT_URL", s3.endpoint_url)
        env.setdefault("DEPOT_S3_PUBLIC_URL", s3.endpoint_url)
        env.setdefault("DEPOT_S3_ACCESS_KEY_ID", credentials.access_key)
        env.setdefault("DEPOT_S3_SECRET_ACCESS_KEY", credentials.secret_key)
    env.setdefault("DEPOT_S3_BUCKET", "depot")
    asyncio.run(_ensure_bucket(env))


async def _ensure_bucket(env: Mapping[str, str]) -> None:
    options: dict[str, Any] = {
        "endpoint_url": env.get("DEPOT_S3_ENDPOINT_URL"),
        "region_name": env.get("DEPOT_S3_REGION", "us-east-1"),
        "config": Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    }
    if "DEPOT_S3_ACCESS_KEY_ID" in env:
        options["aws_access_key_id"] = env["DEPOT_S3_ACCESS_KEY_ID"]
        options["aws_secret_access_key"] = env.get("DEPOT_S3_SECRET_ACCESS_KEY")
    async with aioboto3.Session().client("s3", **options) as client:
        try:
            await client.head_bucket(Bucket=env["DEPOT_S3_BUCKET"])
        except ClientError:
            await client.create_bucket(Bucket=env["DEPOT_S3_BUCKET"])
            say(f"S3: created bucket {env['DEPOT_S3_BUCKET']}")


def _announce_stop(what: str, action: Callable[[], None]) -> None:
    started = time.monotonic()
    action()
    say(f"stopped {what} in {time.monotonic() - started:.1f} s")


def _start_processes(layout: Layout, env: dict[str, str], stack: ExitStack) -> dict[str, subprocess.Popen[bytes]]:
    ports = [layout.port] + [layout.service_port(offset) for *_, offset in (*SERVICES, WEB)]
    busy = wait_for_free_ports(ports, timeout=10)
    if busy:
        raise SystemExit(f"ports in use: {busy}; set DEPOT_PORT to use others (services take DEPOT_PORT+1..+4)")
    output: IO[str] = sys.stdout
    children: dict[str, subprocess.Popen[bytes]] = {}
    for name, factory, offset in [(n, f, o) for n, f, _, o in SERVICES] + [WEB]:
        port = layout.service_port(offset)
        args = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", layout.host, "--port", str(port)]
        args += ["--timeout-keep-alive", "65", "--no-access-log", "--timeout-graceful-shutdown", "20"]
        children[name] = spawn(args, output=output, env=env)
        stack.callback(_announce_stop, name, partial(stop, children[name]))
    # The front door starts once the services listen, so that it never answers 503 while they boot.
    for name, offset in [(n, o) for n, _, _, o in SERVICES] + [(WEB[0], WEB[2])]:
        wait_for_port(layout.service_port(offset), children[name], READY_TIMEOUT_SECONDS, layout.host)
    routes = [f"{prefix}=http://{layout.host}:{layout.service_port(offset)}" for _, _, prefix, offset in SERVICES]
    door = [sys.executable, "-m", "devstack.frontdoor", "--host", layout.host, "--port", str(layout.port)]
    for route in routes:
        door += ["--route", route]
    door += ["--default", f"http://{layout.host}:{layout.service_port(WEB[2])}"]
    children["front door"] = spawn(door, output=output, env=env)
    stack.callback(_announce_stop, "front door", partial(stop, children["front door"]))
    return children


def _wait_until_ready(layout: Layout, children: Mapping[str, subprocess.Popen[bytes]]) -> None:
    base = f"http://{layout.host}:{layout.port}"
    waiting = {prefix for _, _, prefix, _ in SERVICES} | {""}  # "": web_service's /health/ready
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with httpx.Client(timeout=2.0) as client:
        while waiting:
            _check_children(children)
            if time.monotonic() > deadline:
                raise SystemExit(f"not ready after {READY_TIMEOUT_SECONDS:.0f} s: {sorted(waiting)}")
            for prefix in sorted(waiting):
                try:
                    if client.get(f"{base}{prefix}/health/ready").status_code == 200:
                        waiting.discard(prefix)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)


def _check_children(children: Mapping[str, subprocess.Popen[bytes]]) -> None:
    for name, process in children.items():
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with status {process.returncode}")


def _print_summary(layout: Layout, env: Mapping[str, str]) -> None:
    base = f"http://{layout.host}:{layout.port}"
    say("")
    say(f"Depot is running at {base}  <- open this in a browser (web_service on port {layout.service_port(WEB[2])})")
    for name, _, prefix, offset in SERVICES:
        say(f"  {prefix:<10} {base}{prefix}/docs   ({name} on port {layout.service_port(offset)})")
    say(f"  S3         {env.get('DEPOT_S3_ENDPOINT_URL')} (bucket {env.get('DEPOT_S3_BUCKET')})")
    if "DEPOT_DATABASE_URL" not in os.environ:
        say(f"  PostgreSQL 127.0.0.1:{layout.postgres_port} database {DATABASE}, role {APP_ROLE}")
    say(f"  data       {layout.data_dir} (credentials in secrets.json and s3/credentials.json)")
    admin = env.get("DEPOT_ADMIN_USERNAME")
    say(
        f"  admin      {admin} (from DEPOT_ADMIN_USERNAME)"
        if admin
        else "  admin      set DEPOT_ADMIN_USERNAME and DEPOT_ADMIN_PASSWORD to create one"
    )
    say("Press Ctrl-C to stop everything.")


def _raise_stop(signum: int, _: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def run(migrate_only: bool = False) -> int:
    """Bring the registry up and keep it up until a signal; every child stops with it."""
    layout = Layout.from_environment(os.environ)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DEPOT_ENVIRONMENT", "development")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    with _exclusive(layout.data_dir), ExitStack() as stack:
        try:
            url = _start_database(layout, env, stack)
            say("migrating")
            asyncio.run(migrations.upgrade(url))
            if migrate_only:
                return 0
            _provision_service_account(layout, env)
            _web_settings(layout, env)
            _start_s3(layout, env, stack)
            children = _start_processes(layout, env, stack)
            _wait_until_ready(layout, children)
            _print_summary(layout, env)
            while True:
                _check_children(children)
                time.sleep(0.5)
        except Stop as reason:
            say(f"{reason}: shutting down")
        except (RuntimeError, TimeoutError, OSError) as error:
            say(f"failed: {error}")
            return 1
        finally:
            # The children stop through the stack, in the reverse order of their start; a second
            # signal must not cut that short.
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.run", description=__doc__)
    parser.add_argument("--migrate-only", action="store_true", help="start the database if needed, migrate, stop")
    args = parser.parse_args()
    sys.exit(run(migrate_only=args.migrate_only))


if __name__ == "__main__":
    main()
