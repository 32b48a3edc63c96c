"""Helpers shared by the tests: apps served in-process with their lifespan, or by real uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from asgi_lifespan import LifespanManager
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
    """A client for `app`, with its lifespan run around the block."""
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://depot.test") as client:
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
                task.result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
