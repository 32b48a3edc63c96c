"""Readiness and errors while PostgreSQL or S3 is down, and recovery when it returns.

These tests stop servers, so they get a PostgreSQL and an S3 server of their own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from common import migrations
from common.api import Call, Operation
from common.app import Readiness, create_service_app
from devstack.postgres import EmbeddedPostgres, ensure_role_and_database
from devstack.processes import free_port
from devstack.s3 import EmbeddedS3, S3Credentials, free_s3_port
from package_service.settings import PackageSettings
from tests.conftest import Servers, server_root
from tests.helpers import WAIT_SECONDS, eventually, in_process, service_settings

# Servers of their own, stopped and started again: the slow tier.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def own_servers() -> Iterator[Servers]:
    with server_root() as root:
        yield from _own_servers(root)


def _own_servers(root: Path) -> Iterator[Servers]:
    postgres = EmbeddedPostgres(root / "postgres", free_port())
    s3 = EmbeddedS3(root / "s3", free_s3_port(), S3Credentials.load_or_create(root / "s3.json"))
    postgres.start()
    s3.start()
    try:
        password = uuid.uuid4().hex
        asyncio.run(ensure_role_and_database(postgres.dsn(), role="depot", password=password, database="depot"))
        servers = Servers(postgres, s3, password)
        asyncio.run(migrations.upgrade(servers.database_url("depot")))
        yield servers
    finally:
        s3.stop()
        postgres.stop()


async def count_rows(call: Call[None, None]) -> Readiness:
    value = (await call.db.execute(text("SELECT count(*) FROM queue.jobs"))).scalar_one()
    return Readiness(status="ok", checks={"rows": str(value)})


@pytest.fixture
async def client(own_servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    bucket = "outage"
    settings = PackageSettings(
        **service_settings(own_servers, own_servers.database_url("depot"), bucket, ready_check_timeout_seconds=1.0)
    )
    operation = Operation("GET", "/rows", count_rows, "Read the database.", response=Readiness)
    app = create_service_app(
        service="package_service", prefix="/packages", settings=settings, operations=[operation], uses_queue=True
    )
    async with in_process(app) as client:
        await app.state.resources.s3.client.create_bucket(Bucket=bucket)
        yield client


async def wait_ready(client: httpx.AsyncClient) -> httpx.Response:
    async def ready() -> httpx.Response | None:
        response = await client.get("/packages/health/ready")
        return response if response.status_code == 200 else None

    return await eventually(ready, within=2 * WAIT_SECONDS, interval=0.2, message="ready")


async def test_database_outage_gives_503_and_recovers(own_servers: Servers, client: httpx.AsyncClient) -> None:
    assert (await wait_ready(client)).json()["checks"] == {"database": "ok", "s3": "ok", "queue": "ok"}
    assert (await client.get("/packages/rows")).status_code == 200

    await asyncio.to_thread(own_servers.postgres.stop)
    ready = await client.get("/packages/health/ready")
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert int(ready.headers["retry-after"]) >= 1
    body = ready.json()
    assert body["checks"]["database"] != "ok"
    assert body["checks"]["queue"] != "ok"
    assert body["checks"]["s3"] == "ok"
    assert "database" in body["detail"]
    assert "127.0.0.1" not in ready.text

    during = await client.get("/packages/rows")
    assert during.status_code == 503, "a database that went away is a 503, never a 500"
    assert during.headers["retry-after"]
    assert (await client.get("/packages/health")).status_code == 200, "liveness checks no dependency"

    await asyncio.to_thread(own_servers.postgres.start)
    await wait_ready(client)
    assert (await client.get("/packages/rows")).status_code == 200


async def test_s3_outage_gives_503_and_recovers(own_servers: Servers, client: httpx.AsyncClient) -> None:
    await wait_ready(client)
    await asyncio.to_thread(own_servers.s3.stop)
    ready = await client.get("/packages/health/ready")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["s3"] in {"unavailable", "timeout"}
    assert (checks["database"], checks["queue"]) == ("ok", "ok")
    assert ready.json()["detail"] == "Not ready: s3."

    await asyncio.to_thread(own_servers.s3.start)
    assert (await wait_ready(client)).json()["status"] == "ok"
