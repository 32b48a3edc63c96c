"""TLS to the database, checked as on AWS: a server whose certificate is not from the trusted CA, or does
not name the host, is refused; a server that will not speak TLS is refused, not used in clear.

The embedded PostgreSQL is built without SSL, so the server side of TLS is a small proxy that does
what PostgreSQL does (answers the client's SSLRequest with `S`, then a TLS handshake with its
certificate) and relays the decrypted protocol to the real server. The client side is the
services' own: the engine `create_engine` makes, the queue's LISTEN connection and the migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from common import migrations
from common.db import check_database, create_engine, database_tls
from common.queue import Job, Worker
from common.settings import CommonSettings
from tests.certificates import Authority
from tests.conftest import Servers
from tests.helpers import eventually

SSL_REQUEST = 80877103


@dataclass
class TlsProxy:
    """PostgreSQL's TLS front half, in front of a server without it."""

    upstream_port: int
    context: ssl.SSLContext | None  # None: answer `N` (no TLS here), as a server without SSL does
    handshakes: int = 0
    failed_handshakes: int = 0
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            length, code = struct.unpack("!ii", await reader.readexactly(8))
            if (length, code) != (8, SSL_REQUEST):
                return  # a client that does not ask for TLS first gets nothing from this server
            if self.context is None:
                writer.write(b"N")
                await writer.drain()
                await reader.read(1)  # the client hangs up (a client that went on in clear is not served)
                return
            writer.write(b"S")
            await writer.drain()
            try:
                await writer.start_tls(self.context)
            except (ssl.SSLError, ConnectionError):
                self.failed_handshakes += 1
                return
            self.handshakes += 1
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            try:
                await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
            finally:
                upstream_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[TlsProxy]:
        server = await asyncio.start_server(self._spawn, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    def _spawn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self.handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # One side hung up: hang up on the other (a TLS stream cannot be half-closed).
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@dataclass(frozen=True)
class Pki:
    trusted: Path  # the bundle the client is given
    folder: Path
    authority: Authority

    def server_context(self, host: str, authority: Authority | None = None) -> ssl.SSLContext:
        certificate, key = (authority or self.authority).issue(self.folder, host)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate, key)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    authority = Authority.create("Depot test database CA")
    return Pki(authority.write(tmp_path / "bundle.pem"), tmp_path, authority)


def through(database_url: str, port: int) -> str:
    return make_url(database_url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


async def test_the_services_engine_the_queue_listener_and_migrations_connect_through_verified_tls(
    servers: Servers, database_url: str, pki: Pki
) -> None:
    proxy = TlsProxy(servers.postgres.port, pki.server_context("127.0.0.1"))
    async with proxy.serving():
        url = through(database_url, proxy.port)
        settings = CommonSettings(database_url=url, database_ssl_root_cert=pki.trusted)
        engine = create_engine(settings, "depot-tls-test")
        try:
            await check_database(engine)
            assert proxy.handshakes == 1, "the pool's connection went through TLS"

            async def handler(job: Job) -> None:
                return None

            worker = Worker(engine, "tls_check", handler, lease=timedelta(seconds=30), poll_interval=3600)
            async with worker:
                await eventually(lambda: worker.listening, message="the LISTEN connection over TLS")
            assert proxy.handshakes >= 2, "LISTEN connected beside the pool, through TLS as well"
        finally:
            await engine.dispose()
        before = proxy.handshakes
        await migrations.upgrade(url, tls=database_tls(settings))
        assert proxy.handshakes == before + 1, "the migrations connected through TLS"
        assert proxy.failed_handshakes == 0


async def _refused(url: str, bundle: Path) -> BaseException:
    engine = create_engine(CommonSettings(database_url=url, database_ssl_root_cert=bundle), "depot-tls-test")
    try:
        with pytest.raises(Exception) as raised:  # noqa: PT011 - the driver's error type varies with the failure
            await check_database(engine)
        return raised.value
    finally:
        await engine.dispose()


def _chain(error: BaseException) -> str:
    parts = []
    current: BaseException | None = error
    while current is not None:
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


async def test_a_certificate_from_another_authority_is_refused(servers: Servers, database_url: str, pki: Pki) -> None:
    impostor = Authority.create("Someone else's CA")
    proxy = TlsProxy(servers.postgres.port, pki.server_context("127.0.0.1", authority=impostor))
    async with proxy.serving():
        error = await _refused(through(database_url, proxy.port), pki.trusted)
        assert "certificate verify failed" in _chain(error)
        with pytest.raises(ssl.SSLCertVerificationError):
            await migrations.upgrade(through(database_url, proxy.port), tls=database_tls(
                CommonSettings(database_ssl_root_cert=pki.trusted)))  # fmt: skip
    assert proxy.handshakes == 0, "no session was relayed to the database"


async def test_a_certificate_for_another_host_is_refused(servers: Servers, database_url: str, pki: Pki) -> None:
    proxy = TlsProxy(servers.postgres.port, pki.server_context("db.elsewhere.example"))
    async with proxy.serving():
        error = await _refused(through(database_url, proxy.port), pki.trusted)
    assert "IP address mismatch" in _chain(error) or "Hostname mismatch" in _chain(error), _chain(error)
    assert proxy.handshakes == 0


async def test_a_server_that_declines_tls_is_not_used_in_clear(servers: Servers, database_url: str, pki: Pki) -> None:
    proxy = TlsProxy(servers.postgres.port, None)
    async with proxy.serving():
        error = await _refused(through(database_url, proxy.port), pki.trusted)
    assert "SSL" in _chain(error) or "ssl" in _chain(error), _chain(error)
    assert proxy.handshakes == 0


async def test_without_the_setting_the_impostor_would_have_been_served(
    servers: Servers, database_url: str, pki: Pki
) -> None:
    # The control for the refusals above: without a root certificate (asyncpg's `prefer`), the
    # client takes whatever certificate it is shown, and the proxy relays the session.
    proxy = TlsProxy(servers.postgres.port, pki.server_context("127.0.0.1", authority=Authority.create("impostor")))
    async with proxy.serving():
        engine = create_engine(CommonSettings(database_url=through(database_url, proxy.port)), "depot-tls-test")
        try:
            await check_database(engine)
        finally:
            await engine.dispose()
    assert proxy.handshakes == 1, "asyncpg's default (prefer) took TLS without checking anything"
