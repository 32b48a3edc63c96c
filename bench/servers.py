"""What every benchmark starts: throwaway PostgreSQL and S3 servers, and a service under uvicorn."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.stats import progress
from devstack.postgres import FAST_UNSAFE_SETTINGS, EmbeddedPostgres
from devstack.processes import free_port, spawn, stop, tail, wait_for_port
from devstack.s3 import EmbeddedS3, S3Credentials, free_s3_port

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def throwaway_servers(root: Path) -> Iterator[tuple[EmbeddedPostgres, EmbeddedS3]]:
    """A fast, non-durable PostgreSQL and a SeaweedFS server under `root`, stopped on the way out."""
    postgres = EmbeddedPostgres(root / "postgres", free_port(), FAST_UNSAFE_SETTINGS)
    s3 = EmbeddedS3(root / "s3", free_s3_port(), S3Credentials.load_or_create(root / "s3-credentials.json"))
    try:
        progress("starting PostgreSQL and SeaweedFS, migrating")
        postgres.start()
        s3.start()
        yield postgres, s3
    finally:
        s3.stop()
        postgres.stop()


# `ENV NAME=value` settings of the Dockerfile's base image that configure uvicorn in production.
_UVICORN_SETTING = re.compile(r"^\s*(?:ENV\s+)?((?:UVICORN_|FORWARDED_ALLOW_IPS)\w*)=(\S+?)\s*\\?$", re.MULTILINE)


def production_uvicorn_environment() -> dict[str, str]:
    """uvicorn's settings in the service images (the `UVICORN_*` variables of the Dockerfile), read from it so
    that a benchmark serves its apps as production does; host and port are the benchmark's."""
    found = dict(_UVICORN_SETTING.findall((ROOT / "Dockerfile").read_text()))
    if "UVICORN_TIMEOUT_KEEP_ALIVE" not in found:
        raise RuntimeError("the Dockerfile's UVICORN_* settings were not found")
    return {name: value for name, value in found.items() if name not in {"UVICORN_HOST", "UVICORN_PORT"}}


@contextmanager
def served(
    service: str,
    env: dict[str, str],
    log_path: Path,
    *,
    access_log: bool = False,
    factory: str | None = None,
    production: bool = False,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`service` (e.g. `package_service`) running under uvicorn: its base URL and process, stopped on the way out.

    `factory` serves another app factory under the same name (`bench.anchors:create_app`). `production` serves it
    with the images' uvicorn settings only (`production_uvicorn_environment`), no flag of the benchmark's own.
    """
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "--factory", factory or f"{service}.app:create_app"]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    if production:
        env = {**env, **production_uvicorn_environment()}
    else:
        args += ["--log-level", "warning"]
        if not access_log:
            args.append("--no-access-log")
    with log_path.open("ab") as log:
        process = spawn(args, output=log, env=env, cwd=ROOT)
    try:
        try:
            wait_for_port(port, process, timeout=60)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{service} did not start: {error}\n{tail(log_path)}") from error
        yield f"http://127.0.0.1:{port}", process
    except BaseException:
        sys.stderr.write(f"{service} log (last lines):\n{tail(log_path)}\n")
        raise
    finally:
        stop(process)
