"""The front door over real loopback HTTP: real uvicorn servers upstream and in front, no mocks.

The memory tests run the front door as its own process (`python -m devstack.frontdoor`) so that
its resident set size can be measured honestly while hundreds of MiB stream through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import hashlib
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from devstack.frontdoor import create_frontdoor
from tests.helpers import WAIT_SECONDS, eventually

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
BLOCK = os.urandom(MIB)
BIG_MIB = 256
RSS_BUDGET = 64 * MIB
PLAIN = b"hello, depot! " * 200
GZIPPED = gzip.compress(PLAIN)
VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


@functools.cache
def big_sha256() -> str:
    digest = hashlib.sha256()
    for _ in range(BIG_MIB):
        digest.update(BLOCK)
    return digest.hexdigest()


async def blocks(count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield BLOCK


@dataclass
class Record:
    """What an upstream saw of the uploads sent to it."""

    receiving: asyncio.Event = field(default_factory=asyncio.Event)
    uploads: asyncio.Queue[tuple[str, int]] = field(default_factory=asyncio.Queue)
    downloads: asyncio.Queue[int] = field(default_factory=asyncio.Queue)  # MiB sent, once a download ends


def canned(request: Request, record: Record) -> Response | None:
    """The fixed answer chosen by the path's last segment, if it names one."""
    tail = request.url.path.rsplit("/", 1)[-1]
    fixed = {
        "created": lambda: Response(b"made", status_code=201, headers={"X-Custom": "yes"}),
        "not-modified": lambda: Response(status_code=304, headers={"ETag": '"v1"'}),
        "gzip": lambda: Response(GZIPPED, headers={"Content-Encoding": "gzip"}, media_type="text/plain"),
    }
    if tail in fixed:
        return fixed[tail]()
    if tail == "limited" and int(request.headers.get("content-length", "0")) > 1000:
        return Response(b"too large", status_code=413)  # on the announced length alone, the body unread
    if tail == "cookies":
        response = Response(b"ok")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response
    if tail == "download":
        count, sent = int(request.query_params["mib"]), [0]

        async def counted() -> AsyncIterator[bytes]:
            async for block in blocks(count):
                yield block
                sent[0] += 1
                # uvicorn's `send` returns at once once the peer is gone; without a real suspension
                # point Starlette could never cancel this loop, and `sent` would count unsent blocks.
                await asyncio.sleep(0)

        async def report() -> None:  # runs after the stream ends, disconnected or not
            record.downloads.put_nowait(sent[0])

        headers = {"Content-Length": str(count * MIB)}
        return StreamingResponse(counted(), headers=headers, background=BackgroundTask(report))
    return None


def upstream_app(name: str, record: Record) -> Starlette:
    """An upstream that echoes what it received (hashing the body), unless `canned` has an answer."""

    async def endpoint(request: Request) -> Response:
        if (answer := canned(request, record)) is not None:
            return answer
        digest, size = hashlib.sha256(), 0
        try:
            async for chunk in request.stream():
                record.receiving.set()
                digest.update(chunk)
                size += len(chunk)
        except ClientDisconnect:
            record.uploads.put_nowait(("disconnect", size))
            return Response(status_code=400)
        record.uploads.put_nowait(("complete", size))
        return JSONResponse(
            {
                "service": name,
                "method": request.method,
                "raw_path": request.scope["raw_path"].decode("latin-1"),
                "query": request.scope["query_string"].decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
                "size": size,
                "sha256": digest.hexdigest(),
            }
        )

    return Starlette(routes=[Route("/{rest:path}", endpoint, methods=METHODS)])


def header(echo: dict[str, Any], name: str) -> list[str]:
    """All values of one request header as the upstream received it."""
    return [value for key, value in echo["headers"] if key == name]


async def broken_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A raw HTTP "server" that hangs up: at once (`.../empty`) or 10 bytes into a 1000-byte body."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/truncated " in head.split(b"\r\n", 1)[0]:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await writer.drain()
    writer.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Servers:
    """Real uvicorn servers on ephemeral loopback ports, stopped together (each takes ~0.1 s to notice)."""

    def __init__(self) -> None:
        self._running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(self, app: ASGIApp) -> str:
        """Serve `app`; its base URL once it accepts connections."""
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", access_log=False, proxy_headers=False
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        self._running.append((server, task))

        def started() -> bool:
            if task.done():
                raise RuntimeError(f"server failed to start: {task.exception()!r}")
            return server.started

        await eventually(started, interval=0.01)
        return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        for server, _ in self._running:
            server.should_exit = True
        await asyncio.wait_for(asyncio.gather(*(task for _, task in self._running)), timeout=WAIT_SECONDS)


@contextlib.asynccontextmanager
async def servers() -> AsyncIterator[Servers]:
    running = Servers()
    try:
        yield running
    finally:
        await running.stop()


@dataclass
class Stack:
    client: httpx.AsyncClient
    front_port: int
    records: dict[str, Record]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """Three echo upstreams, one that hangs up, one that is down, and the front door before them all."""
    records = {name: Record() for name in ("auth", "packages", "validate")}
    async with contextlib.AsyncExitStack() as exits:
        running = await exits.enter_async_context(servers())
        routes = {f"/{name}": await running.start(upstream_app(name, records[name])) for name in records}
        broken = await asyncio.start_server(broken_upstream, "127.0.0.1", 0)
        exits.push_async_callback(broken.wait_closed)
        exits.callback(broken.close)
        routes["/broken"] = f"http://127.0.0.1:{broken.sockets[0].getsockname()[1]}"
        routes["/down"] = f"http://127.0.0.1:{free_port()}"
        front = await running.start(create_frontdoor(routes))
        client = await exits.enter_async_context(
            httpx.AsyncClient(base_url=front, trust_env=False, timeout=WAIT_SECONDS)
        )
        yield Stack(client, int(front.rsplit(":", 1)[1]), records)


@pytest.mark.parametrize(
    ("path", "service", "raw_path", "query"),
    [
        ("/auth", "auth", "/auth", ""),
        ("/auth/token?grant=password", "auth", "/auth/token", "grant=password"),
        ("/packages/acme/a%2Fb/files?name=x%2Fy&q=1+2", "packages", "/packages/acme/a%2Fb/files", "name=x%2Fy&q=1+2"),
        ("/validate/jobs/7?q=a%20b", "validate", "/validate/jobs/7", "q=a%20b"),
    ],
)
async def test_prefix_routes_to_its_upstream_with_path_and_query_intact(
    stack: Stack, path: str, service: str, raw_path: str, query: str
) -> None:
    response = await stack.client.get(path)
    assert response.status_code == 200
    echo = response.json()
    assert (echo["service"], echo["method"], echo["raw_path"], echo["query"]) == (service, "GET", raw_path, query)


@pytest.mark.parametrize("path", ["/authx", "/", "/other", "/packagesfoo/x", "/auth/metrics", "/validate/metrics"])
async def test_unrouted_path_is_a_404_problem(stack: Stack, path: str) -> None:
    response = await stack.client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404
    assert VALID_ID.fullmatch(body["request_id"])
    assert body["request_id"] == response.headers["x-request-id"]


async def test_only_the_exact_metrics_path_is_kept_inside(stack: Stack) -> None:
    assert (await stack.client.get("/auth/metrics/more")).json()["service"] == "auth"
    assert (await stack.client.get("/auth/metricsx")).json()["service"] == "auth"


async def read_status_line(reader: asyncio.StreamReader) -> bytes:
    return (await reader.readuntil(b"\r\n")).strip()


async def test_an_early_answer_reaches_a_client_that_waits_for_100_continue(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.front_port)
    try:
        writer.write(
            b"PUT /packages/x/limited HTTP/1.1\r\nHost: depot\r\nContent-Length: 21474836480\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(10):
            status = await read_status_line(reader)  # the final answer, not a 100 Continue
        assert status == b"HTTP/1.1 413 Request Entity Too Large"
    finally:
        writer.close()
    assert stack.records["packages"].uploads.empty(), "the upstream never read a byte of the body"


async def test_an_early_answer_reaches_a_client_that_is_still_sending(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.front_port)
    sent = 0

    async def keep_sending() -> None:
        nonlocal sent
        with contextlib.suppress(OSError):
            while sent < 1024 * MIB:
                writer.write(BLOCK)
                await writer.drain()
                sent += MIB

    try:
        writer.write(b"PUT /packages/x/limited HTTP/1.1\r\nHost: depot\r\nContent-Length: 1073741824\r\n\r\n")
        sending = asyncio.create_task(keep_sending())
        async with asyncio.timeout(10):
            status = await read_status_line(reader)
        assert status == b"HTTP/1.1 413 Request Entity Too Large"
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        assert sent < 1024 * MIB, "answered while the body was still coming"
    finally:
        writer.close()


async def test_404_keeps_a_valid_incoming_request_id(stack: Stack) -> None:
    response = await stack.client.get("/nowhere", headers={"X-Request-ID": "trace-42"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == response.json()["request_id"] == "trace-42"


async def test_valid_request_id_reaches_upstream_unchanged(stack: Stack) -> None:
    response = await stack.client.get("/auth/me", headers={"X-Request-ID": "abc-123.X_y"})
    assert header(response.json(), "x-request-id") == ["abc-123.X_y"]
    assert response.headers["x-request-id"] == "abc-123.X_y"


@pytest.mark.parametrize("bad", ["has space", "a" * 200, ""])
async def test_invalid_request_id_is_replaced_consistently(stack: Stack, bad: str) -> None:
    response = await stack.client.get("/auth/me", headers={"X-Request-ID": bad})
    [seen] = header(response.json(), "x-request-id")
    assert seen != bad
    assert VALID_ID.fullmatch(seen)
    assert response.headers["x-request-id"] == seen


async def test_forwarding_and_hop_by_hop_headers(stack: Stack) -> None:
    response = await stack.client.get(
        "/validate/x",
        headers={
            "Host": "depot.example",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "X-Custom": "kept",
        },
    )
    echo = response.json()
    assert header(echo, "host") == ["depot.example"]
    assert header(echo, "x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]
    assert header(echo, "x-forwarded-proto") == ["http"]
    assert header(echo, "x-forwarded-host") == ["depot.example"]
    assert header(echo, "x-custom") == ["kept"]
    for hop in ("x-hop", "keep-alive", "te"):
        assert header(echo, hop) == []


async def test_request_body_framing_is_preserved(stack: Stack) -> None:
    sized = (await stack.client.post("/packages/up", content=BLOCK)).json()
    assert header(sized, "content-length") == [str(MIB)]
    assert header(sized, "transfer-encoding") == []
    assert (sized["size"], sized["sha256"]) == (MIB, hashlib.sha256(BLOCK).hexdigest())

    chunked = (await stack.client.put("/packages/up", content=blocks(3))).json()
    assert header(chunked, "transfer-encoding") == ["chunked"]
    assert header(chunked, "content-length") == []
    assert (chunked["size"], chunked["sha256"]) == (3 * MIB, hashlib.sha256(BLOCK * 3).hexdigest())

    bodiless = (await stack.client.get("/packages/up")).json()
    assert header(bodiless, "transfer-encoding") == header(bodiless, "content-length") == []


async def test_status_headers_and_raw_body_are_relayed(stack: Stack) -> None:
    created = await stack.client.post("/packages/created")
    assert (created.status_code, created.headers["x-custom"], created.content) == (201, "yes", b"made")

    not_modified = await stack.client.get("/packages/not-modified")
    assert (not_modified.status_code, not_modified.headers["etag"], not_modified.content) == (304, '"v1"', b"")

    cookies = await stack.client.get("/auth/cookies")
    assert [c.split(";")[0] for c in cookies.headers.get_list("set-cookie")] == ["a=1", "b=2"]

    async with stack.client.stream("GET", "/packages/gzip") as zipped:
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.headers["content-length"] == str(len(GZIPPED))
        assert b"".join([chunk async for chunk in zipped.aiter_raw()]) == GZIPPED


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unreachable_upstream_is_a_503_problem(stack: Stack, method: str) -> None:
    response = await stack.client.request(method, "/down/x", content=b"body" if method == "POST" else None)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_upstream_hanging_up_never_crashes_the_front_door(stack: Stack) -> None:
    before_answer = await stack.client.get("/broken/empty")
    assert before_answer.status_code == 502
    assert before_answer.headers["content-type"] == "application/problem+json"

    with pytest.raises(httpx.RemoteProtocolError):
        await stack.client.get("/broken/truncated")

    assert (await stack.client.get("/auth/still-up")).status_code == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_client_disconnect_mid_upload_reaches_the_upstream(stack: Stack, framing: str) -> None:
    record = stack.records["packages"]
    _, writer = await asyncio.open_connection("127.0.0.1", stack.front_port)
    try:
        if framing == "chunked":
            head, first = b"Transfer-Encoding: chunked", b"%x\r\n%b\r\n" % (len(BLOCK), BLOCK)
        else:
            head, first = b"Content-Length: %d" % (1024 * MIB), BLOCK
        writer.write(b"POST /packages/upload HTTP/1.1\r\nHost: depot\r\n" + head + b"\r\n\r\n" + first)
        await writer.drain()
        await asyncio.wait_for(record.receiving.wait(), timeout=WAIT_SECONDS)
    finally:
        writer.close()
    outcome, size = await asyncio.wait_for(record.uploads.get(), timeout=WAIT_SECONDS)
    assert outcome == "disconnect"
    assert 0 < size <= MIB


async def test_client_disconnect_mid_download_stops_the_upstream(stack: Stack) -> None:
    async with stack.client.stream("GET", "/packages/download?mib=1024") as response:
        async for _ in response.aiter_raw():
            break  # leaving the block hangs up with the body mostly unread
    sent = await asyncio.wait_for(stack.records["packages"].downloads.get(), timeout=WAIT_SECONDS)
    assert sent < 256, f"the upstream sent {sent} of 1024 MiB to a client that had gone"


class RssSampler:
    """Samples a process's RSS every few milliseconds on a thread of its own."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.baseline = self.peak = self._process.memory_info().rss
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)
            self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self, what: str) -> None:
        """Report the figures (`pytest -s` shows them) and hold the growth to the budget."""
        growth = self.peak - self.baseline
        print(f"\n{what}: RSS {self.baseline / MIB:.1f} MiB -> peak {self.peak / MIB:.1f} MiB", end="")
        print(f" (growth {growth / MIB:.1f} MiB over {self.samples} samples)")
        assert self.samples > 20, "the sampler should have watched the whole transfer"
        assert growth < RSS_BUDGET


@dataclass
class FrontDoorProcess:
    process: asyncio.subprocess.Process
    client: httpx.AsyncClient

    async def stop(self) -> tuple[int | None, str]:
        """SIGTERM, as a process manager would; the exit code and what the process wrote to stderr."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout=10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        assert self.process.stderr is not None
        stderr = (await self.process.stderr.read()).decode(errors="replace")
        return self.process.returncode, stderr


@pytest.fixture
async def front_process() -> AsyncIterator[FrontDoorProcess]:
    """`python -m devstack.frontdoor` in its own process, routing /packages to an in-test upstream."""
    async with servers() as running:
        upstream = await running.start(upstream_app("packages", Record()))
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "devstack.frontdoor",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--route",
            f"/packages={upstream}",
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,  # warnings only; little enough never to fill the pipe
        )
        front = FrontDoorProcess(process, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False))
        try:

            async def answering() -> bool:
                assert process.returncode is None, "the front door exited at startup"
                return (await front.client.get("/__ready")).status_code == 404

            await eventually(answering, ignoring=httpx.ConnectError, message="the front door answers")
            yield front
        finally:
            await front.client.aclose()
            await front.stop()


@pytest.mark.slow  # 256 MiB through a front door process, its memory sampled all along
async def test_large_upload_streams_through_in_flat_memory(front_process: FrontDoorProcess) -> None:
    client = front_process.client
    await client.post("/packages/warm-up", content=blocks(8))  # let pools and allocators settle first
    with RssSampler(front_process.process.pid) as rss:
        response = await client.post("/packages/upload", content=blocks(BIG_MIB), timeout=60)
    assert response.status_code == 200
    echo = response.json()
    assert header(echo, "transfer-encoding") == ["chunked"]
    assert (echo["size"], echo["sha256"]) == (BIG_MIB * MIB, big_sha256())
    rss.check("upload")
    # uvicorn shuts down gracefully, then re-raises the signal it caught, so the exit is "killed by SIGTERM".
    code, stderr = await front_process.stop()
    assert (code, stderr) == (-signal.SIGTERM, "")


@pytest.mark.slow  # 256 MiB through a front door process, its memory sampled all along
async def test_large_download_streams_through_in_flat_memory(front_process: FrontDoorProcess) -> None:
    client = front_process.client
    await client.get("/packages/download?mib=8")
    digest, size = hashlib.sha256(), 0
    with RssSampler(front_process.process.pid) as rss:
        async with client.stream("GET", f"/packages/download?mib={BIG_MIB}", timeout=60) as response:
            assert response.headers["content-length"] == str(BIG_MIB * MIB)
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
    assert (size, digest.hexdigest()) == (BIG_MIB * MIB, big_sha256())
    rss.check("download")
