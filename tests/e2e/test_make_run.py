"""`make run` end to end: the real orchestrator, real servers and services, through the front door.

Covers a fresh start, data that survives a restart, Ctrl-C leaving nothing behind, recovery after
the orchestrator is killed outright, and an external database meaning no embedded one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import psutil
import pytest
from botocore.config import Config

from devstack.processes import free_port, port_is_free
from tests.conftest import Servers, free_s3_block, server_root
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]
PREFIXES = ("/auth", "/packages", "/validate")
# A start is seconds on an idle machine; a loaded 2-core one may take minutes (a first start creates
# the database, a restart after a crash replays its log), and a stop waits for every child.
START_SECONDS = 240
STOP_SECONDS = 120

pytestmark = pytest.mark.slow


def free_port_run(count: int = 4) -> int:
    """A port followed by count-1 free ones (the front door and the three services)."""
    for _ in range(100):
        base = free_port()
        if base + count < 65535 and all(port_is_free(base + offset) for offset in range(count)):
            return base
    raise RuntimeError("no run of free ports")


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)


ADMIN = {"username": "boss", "password": "a passphrase with 'quotes'; and more"}


@pytest.fixture
def layout() -> Iterator[dict[str, str]]:
    with server_root() as root:
        yield {
            "DEPOT_ADMIN_USERNAME": ADMIN["username"],
            "DEPOT_ADMIN_PASSWORD": ADMIN["password"],
            "DEPOT_DATA_DIR": str(root / "data"),
            "DEPOT_PORT": str(free_port_run()),
            "DEPOT_POSTGRES_PORT": str(free_port()),
            "DEPOT_S3_PORT": str(free_s3_block()),
        }


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:  # a failed test must not leave a registry running
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def start(runs: list[Run], env_overrides: dict[str, str], log: Path) -> Run:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPOT_")}
    env.update(env_overrides)
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack.run"], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    run = Run(process, log, int(env_overrides["DEPOT_PORT"]))
    runs.append(run)

    def running() -> bool:
        assert process.poll() is None, f"make run exited early:\n{run.output()[-4000:]}"
        return "Depot is running" in run.output()

    asyncio.run(eventually(running, within=START_SECONDS, interval=0.2, message=lambda: run.output()[-4000:]))
    return run


def assert_serving(run: Run) -> None:
    with httpx.Client(base_url=run.url, timeout=30) as client:
        for prefix in PREFIXES:
            for path in ("/health", "/health/ready"):
                response = client.get(prefix + path)
                assert response.status_code == 200, (prefix + path, response.text)
        # Every other path is web_service's: the pages, and a 404 page for what names nothing.
        elsewhere = client.get("/elsewhere")
        assert elsewhere.status_code == 404
        assert elsewhere.headers["content-type"].startswith("text/html")
        assert elsewhere.headers["x-request-id"]


def assert_auth_works(run: Run, data_dir: Path) -> None:
    with httpx.Client(base_url=run.url, timeout=30) as client:
        pair = client.post("/auth/login", json=ADMIN)
        assert pair.status_code == 200, pair.text
        me = client.get("/auth/me", headers={"Authorization": f"Bearer {pair.json()['access_token']}"})
        assert me.json()["roles"] == ["admin"]
        service_token = json.loads((data_dir / "secrets.json").read_text())["service_token"]
        grant = client.post("/auth/token", json={"grant_type": "api_token", "api_token": service_token})
        assert grant.status_code == 200, grant.text
        service = client.get("/auth/me", headers={"Authorization": f"Bearer {grant.json()['access_token']}"})
        assert service.json()["roles"] == ["service"]

        # package_service verifies auth_service's token through the JWKS, across real processes.
        admin = {"Authorization": f"Bearer {pair.json()['access_token']}"}
        name = f"e2e-{run.port}-{time.monotonic_ns()}"
        published = client.put(f"/packages/{name}/versions/1.0.0/content", content=b"weights", headers=admin)
        assert published.status_code == 201, published.text
        assert published.json()["status"] == "pending"
        fetched = client.get(f"/packages/{name}/versions/1.0.0/content", headers=admin)
        assert fetched.content == b"weights", "admins may read pending versions"
        forged = client.get(f"/packages/{name}", headers={"Authorization": "Bearer not-a-token"})
        assert forged.status_code == 401

        # The validator takes the job, reads the bytes from S3 and sends its verdict back.
        def decided() -> dict[str, Any] | None:
            version: dict[str, Any] = client.get(f"/packages/{name}/versions/1.0.0", headers=admin).json()
            return None if version["status"] == "pending" else version

        version = asyncio.run(eventually(decided, within=120, interval=0.2, message="a verdict"))
        assert version["status"] == "available", version
        report = client.get(f"/validate/reports/{name}/1.0.0", headers=admin)
        assert (report.status_code, report.json()["status"]) == (200, "passed"), report.text
        # The validator reads the access list from package_service with the service account.
        decision = client.post("/validate", json={"package": name, "action": "admin"}, headers=admin)
        assert decision.json() == {"allowed": True, "reason": "admin"}
        owner_check = {"package": name, "action": "admin", "subject": {"username": "someone-else"}}
        assert client.post("/validate", json=owner_check, headers=admin).json()["allowed"] is False


def stop_and_assert_nothing_left(run: Run, sig: int) -> None:
    children = run.descendants()
    assert len(children) >= 4, "three services and the front door at least"
    run.process.send_signal(sig)
    assert run.process.wait(timeout=STOP_SECONDS) == 0, run.output()[-4000:]
    _, alive = psutil.wait_procs(children, timeout=STOP_SECONDS)
    assert not alive, f"left running: {[process.pid for process in alive]}"
    assert port_is_free(run.port)


def s3_client(data_dir: Path, port: str) -> Any:
    credentials = json.loads((data_dir / "s3" / "credentials.json").read_text())
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id=credentials["access_key"],
        aws_secret_access_key=credentials["secret_key"],
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


async def database_marker(data_dir: Path, port: str, *, create: bool) -> bool:
    password = json.loads((data_dir / "secrets.json").read_text())["database_password"]
    connection = await asyncpg.connect(f"postgresql://depot:{password}@127.0.0.1:{port}/depot")
    try:
        if create:
            await connection.execute("CREATE TABLE survives_restart (id int)")
        return bool(await connection.fetchval("SELECT to_regclass('public.survives_restart') IS NOT NULL"))
    finally:
        await connection.close()


@pytest.mark.timeout(1200)  # three starts, three stops and a migration, each up to minutes on a loaded machine
def test_make_run_lifecycle(layout: dict[str, str], runs: list[Run], tmp_path: Path) -> None:
    data_dir = Path(layout["DEPOT_DATA_DIR"])

    first = start(runs, layout, tmp_path / "first.log")
    assert_serving(first)
    assert_auth_works(first, data_dir)
    token = json.loads((data_dir / "secrets.json").read_text())["service_token"]
    assert "http://127.0.0.1:" in first.output()
    s3 = s3_client(data_dir, layout["DEPOT_S3_PORT"])
    s3.put_object(Bucket="depot", Key="marker", Body=b"kept")
    assert asyncio.run(database_marker(data_dir, layout["DEPOT_POSTGRES_PORT"], create=True))
    stop_and_assert_nothing_left(first, signal.SIGINT)

    second = start(runs, layout, tmp_path / "second.log")
    assert_serving(second)
    assert_auth_works(second, data_dir)
    assert json.loads((data_dir / "secrets.json").read_text())["service_token"] == token, "kept while valid"
    s3 = s3_client(data_dir, layout["DEPOT_S3_PORT"])
    assert s3.get_object(Bucket="depot", Key="marker")["Body"].read() == b"kept"
    assert asyncio.run(database_marker(data_dir, layout["DEPOT_POSTGRES_PORT"], create=False))

    # A crash: the orchestrator dies without any chance to clean up.
    orphans = second.descendants()
    second.process.kill()
    second.process.wait()
    _, alive = psutil.wait_procs(orphans, timeout=STOP_SECONDS)
    assert not alive, "children must not outlive a killed make run"

    third = start(runs, layout, tmp_path / "third.log")
    assert_serving(third)
    stop_and_assert_nothing_left(third, signal.SIGTERM)

    # `make migrate`: the embedded database starts, is migrated, and stops again.
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPOT_")} | layout
    migrate = subprocess.run(
        [sys.executable, "-m", "devstack.run", "--migrate-only"],
        cwd=ROOT, env=env, capture_output=True, check=False, timeout=START_SECONDS,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stdout.decode()[-2000:]
    assert b"migrating" in migrate.stdout
    assert port_is_free(int(layout["DEPOT_POSTGRES_PORT"])), "the database stops after migrating"


@pytest.mark.timeout(600)
def test_external_database_means_no_embedded_server(
    servers: Servers, database_url: str, layout: dict[str, str], runs: list[Run], tmp_path: Path
) -> None:
    run = start(runs, {**layout, "DEPOT_DATABASE_URL": database_url}, tmp_path / "external.log")
    assert_serving(run)
    names = [" ".join(process.cmdline()) for process in run.descendants()]
    assert not any("pginstall/bin/postgres" in name for name in names)
    assert not (Path(layout["DEPOT_DATA_DIR"]) / "postgres").exists()
    assert "using DEPOT_DATABASE_URL" in run.output()
    stop_and_assert_nothing_left(run, signal.SIGINT)
