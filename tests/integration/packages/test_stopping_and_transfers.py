"""What a task does with artifact transfers when it stops, and how its access log tells them apart.

When ECS stops a task (a deploy, a scale-in), uvicorn gets SIGTERM (here: `should_exit`, which is
what its signal handler sets), stops accepting connections and lets requests in flight finish
within `timeout_graceful_shutdown` (the stack sets it from ECS's stop timeout); past that bound it
cuts them. Transfers are marked in the access log, so that the deployment's latency metric, read
from those lines, leaves them out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from devstack.tokens import TokenSigner
from package_service.app import create_app
from package_service.settings import PackageSettings
from tests.conftest import Servers
from tests.helpers import eventually, service_settings
from tests.integration.packages.conftest import Callers, Registry

MIB = 1024 * 1024
SIZE = 48 * MIB  # far more than loopback socket buffers hold: the download is still in flight when the server stops
PAUSE_SECONDS = 3.0  # the client stops reading for this long after SIGTERM


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]
    callers: Callers


@asynccontextmanager
async def serve(app: Starlette, callers: Callers, graceful_seconds: float) -> AsyncIterator[Served]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=graceful_seconds
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, interval=0.01, message="uvicorn started")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Served(f"http://127.0.0.1:{port}", server, task, callers)
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def package_app(servers: Servers, database_url: str, bucket: str) -> tuple[Starlette, Callers]:
    signer = TokenSigner()
    settings = PackageSettings(
        **service_settings(servers, database_url, bucket, auth_public_keys=signer.public_pem, max_artifact_bytes=SIZE)
    )
    return create_app(settings), Callers.signed(signer)


async def upload_artifact(client: httpx.AsyncClient, callers: Callers, name: str) -> str:
    created = await client.post("/packages", json={"name": name}, headers=callers.owner)
    assert created.status_code == 201, created.text
    data = os.urandom(SIZE)
    uploaded = await client.put(f"/packages/{name}/versions/1.0.0/content", content=data, headers=callers.owner)
    assert uploaded.status_code == 201, uploaded.text
    return hashlib.sha256(data).hexdigest()


async def refuses_connections(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as fresh:
            await fresh.get(f"{url}/packages/health")
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False  # accepted just before the listener closed, then closed: not yet
    return False


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_stopping_server_finishes_the_transfers_in_flight(package_app: tuple[Starlette, Callers]) -> None:
    app, callers = package_app
    async with serve(app, callers, graceful_seconds=60) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
            digest = await upload_artifact(client, callers, "big")
            received = hashlib.sha256()
            async with client.stream("GET", "/packages/big/versions/1.0.0/content", headers=callers.admin) as download:
                assert download.status_code == 200
                chunks = download.aiter_raw()
                received.update(await anext(chunks))
                served.server.should_exit = True  # SIGTERM
                await eventually(lambda: refuses_connections(served.url), message="no new connection accepted")
                await asyncio.sleep(PAUSE_SECONDS)  # a slow client: the rest cannot have been sent meanwhile
                assert not served.task.done(), "the download in flight holds the shutdown"
                async for chunk in chunks:
                    received.update(chunk)
            assert received.hexdigest() == digest, "the whole artifact, after the stop began"
        await asyncio.wait_for(served.task, 30)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_an_upload_in_flight_completes_while_the_server_stops(package_app: tuple[Starlette, Callers]) -> None:
    app, callers = package_app
    async with serve(app, callers, graceful_seconds=60) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
            created = await client.post("/packages", json={"name": "up"}, headers=callers.owner)
            assert created.status_code == 201
            block = os.urandom(MIB)

            async def body() -> AsyncIterator[bytes]:
                for sent in range(SIZE // MIB):
                    if sent == 8:
                        served.server.should_exit = True  # SIGTERM, a sixth of the way through
                        await eventually(lambda: refuses_connections(served.url), message="stopped accepting")
                        await asyncio.sleep(PAUSE_SECONDS)  # a slow client
                    yield block

            uploaded = await client.put("/packages/up/versions/1.0.0/content", content=body(), headers=callers.owner)
            assert uploaded.status_code == 201, uploaded.text
            assert uploaded.json()["size"] == SIZE
        await asyncio.wait_for(served.task, 30)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_transfer_longer_than_the_grace_period_is_cut_at_its_bound(
    package_app: tuple[Starlette, Callers],
) -> None:
    app, callers = package_app
    grace = 1.0
    async with serve(app, callers, graceful_seconds=grace) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
            digest = await upload_artifact(client, callers, "slow")
            received = hashlib.sha256()
            async with client.stream("GET", "/packages/slow/versions/1.0.0/content", headers=callers.admin) as download:
                chunks = download.aiter_raw()
                received.update(await anext(chunks))
                stopped_at = time.monotonic()
                served.server.should_exit = True
                # A client too slow to finish in time: it reads nothing while the server stops.
                await asyncio.wait_for(asyncio.shield(served.task), 30)
                took = time.monotonic() - stopped_at

                async def read_the_rest() -> None:
                    async for chunk in chunks:
                        received.update(chunk)

                with pytest.raises(httpx.RemoteProtocolError):
                    await read_the_rest()
            assert received.hexdigest() != digest
        assert grace <= took < grace + 15, f"stopped {took:.1f} s after SIGTERM"


async def test_the_access_log_marks_transfers(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    await registry.create("logged")
    admin = registry.callers.admin  # the version is pending: only an admin reads its bytes before the verdict
    capsys.readouterr()
    path = "/packages/logged/versions/1.0.0"
    assert (await registry.upload("logged", "1.0.0", b"artifact bytes")).status_code == 201
    assert (await registry.client.get(f"{path}/content", headers=admin)).status_code == 200
    assert (await registry.client.head(f"{path}/content", headers=admin)).status_code == 200
    redirected = await registry.client.get(f"{path}/content?redirect=1", headers=admin)
    assert redirected.status_code == 307
    assert (await registry.client.get(path, headers=admin)).status_code == 200
    assert (await registry.client.get("/packages/nothing-here", headers=admin)).status_code == 404
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    access = [(line["method"], line["route"], line["transfer"]) for line in lines if line.get("event") == "request"]
    assert all(line["logger"] == "depot.access" for line in lines if line.get("event") == "request")
    content = "/packages/{name}/versions/{version}/content"
    assert access == [
        ("PUT", content, True),  # a streamed upload
        ("GET", content, True),  # a relayed download
        ("HEAD", content, False),
        ("GET", content, False),  # a redirect to S3: nothing relayed
        ("GET", "/packages/{name}/versions/{version}", False),
        ("GET", "/packages/{name}", False),
    ]
