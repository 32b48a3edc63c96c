"""Helpers shared by the tests: apps served by uvicorn on a loopback port, in the test's process,
so that every call is real HTTP (framing, headers, disconnects) while the test can still reach
the app's state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from tests.conftest import Servers


def service_settings(servers: Servers, database_url: str, bucket: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for any service's settings, pointing at the test servers."""
    return {
        "database_url": database_url,
        "s3_endpoint_url": servers.s3.endpoint_url,
        "s3_access_key_id": servers.s3.credentials.access_key,
        "s3_secret_access_key": servers.s3.credentials.secret_key,
        "s3_bucket": bucket,
        "log_format": "json",
        **overrides,
    }


@contextlib.asynccontextmanager
async def in_process(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app`, served over real HTTP for the block (`real_server`)."""
    async with real_server(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        yield client


@contextlib.asynccontextmanager
async def real_server(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a loopback port for the block; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it, if anything did
                raise RuntimeError("the app did not start: its lifespan failed (see the log)")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
