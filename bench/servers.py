"""What every benchmark starts: throwaway PostgreSQL and S3 servers, and a service under uvicorn."""

from __future__ import annotations

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


@contextmanager
def served(
    service: str, env: dict[str, str], log_path: Path, *, access_log: bool = False
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`service` (e.g. `package_service`) running under uvicorn: its base URL and process, stopped on the way out."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "--factory", f"{service}.app:create_app"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
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
