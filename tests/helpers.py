"""Helpers shared by the tests: apps served by uvicorn on a loopback port, in the test's process,
so that every call is real HTTP (framing, headers, disconnects) while the test can still reach
the app's state; and `eventually`, the one way a test waits."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from devstack.processes import free_port, spawn, stop, wait_for_port
from tests.conftest import Servers

T = TypeVar("T")

# How long a test waits for something that should happen "soon": far beyond what it takes on an
# idle machine, so that only a real failure, not a loaded 2-core CI runner, runs out of it.
WAIT_SECONDS = 30.0


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    within: float = WAIT_SECONDS,
    interval: float = 0.05,
    ignoring: type[Exception] | tuple[type[Exception], ...] = (),
    message: str | Callable[[], str] = "",
) -> T:
    """Call `condition` (a function or a coroutine function) until it returns something truthy; that value.

    Fails the test after `within` seconds, saying `message` (a callable is called then: the tail of a
    log, say) and the last error among `ignoring` (errors that mean "not yet", such as a refused
    connection). Any other error from `condition` fails the test at once: assert in it what must
    hold all along, that a process is still running for instance.
    """
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while True:
        try:
            value: Any = condition()
            if inspect.isawaitable(value):
                value = await value
        except ignoring as error:
            last_error = error
        else:
            if value:
                return cast(T, value)
        if time.monotonic() >= deadline:
            said = message() if callable(message) else message
            cause = f" (last error: {last_error!r})" if last_error is not None else ""
            pytest.fail(f"not within {within:g} s: {said or getattr(condition, '__name__', condition)}{cause}")
        await asyncio.sleep(interval)


async def raw_status(url: str, head: str, body: bytes = b"") -> int:
    """The status a server at `url` answers to `head` (request line and headers, CRLF-separated) and
    `body` sent as they are: for requests an HTTP client refuses to send, such as a body shorter
    than its Content-Length."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode("latin-1") + b"\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(WAIT_SECONDS):
            status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


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


# httpx loads the CA bundle into a new TLS context for every client, 20-40 ms of CPU, even for a
# client that never speaks TLS: the tests' clients share one, made as httpx makes its own.
TLS = httpx.create_ssl_context()


@contextlib.asynccontextmanager
async def in_process(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app`, served over real HTTP for the block (`real_server`)."""
    async with real_server(app) as url, httpx.AsyncClient(base_url=url, timeout=60, verify=TLS) as client:
        yield client


@contextlib.asynccontextmanager
async def real_server(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a loopback port for the block; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        if task.done():
            task.result()  # the server's own error, if it had one
            pytest.fail("uvicorn stopped before it started")
        return server.started

    try:
        await eventually(started, interval=0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto server (AWS APIs emulated) on a free port for the block; its URL."""
    port = free_port()
    process = spawn([str(Path(sys.executable).parent / "moto_server"), "-p", str(port)])
    try:
        wait_for_port(port, process, 120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
