"""The local front door: a path-routing reverse proxy that stands in for the AWS ALB.

Requests whose path is a configured prefix (or lies below it) go, unchanged, to that prefix's
upstream; anything else gets a 404 problem document, and so does each prefix's `/metrics` (for
scrapers inside the network, as on the ALB). Bodies stream both ways with backpressure, so
multi-GB uploads and downloads pass through in constant memory, and an upstream's early answer
(a `413` on the announced length alone) reaches the client before any of the body is read.

    python -m devstack.frontdoor --port 8080 --route /auth=http://127.0.0.1:8101 ...
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import cast

import anyio
import anyio.abc
import h11
import httpx
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import problem_response
from common.requestid import REQUEST_ID_HEADER, accept_or_generate

logger = logging.getLogger("depot.frontdoor")

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        # The front door answers `100-continue` itself when it starts reading the body.
        b"expect",
    }
)
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode("latin-1")
# Set by the front door, so whatever the client sent under these names is dropped.
_OVERRIDDEN = frozenset({_REQUEST_ID, b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})


CONNECT_TIMEOUT = 5.0
READ_SIZE = 64 * 1024
METRICS_PATHS = ("/metrics",)  # under any prefix: for scrapers inside the network, not routed here


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class _UpstreamFailed(Exception):
    """The upstream broke the exchange (closed, or spoke something that is not HTTP/1.1)."""


def _hop_by_hop(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Hop-by-hop header names, including those listed in `Connection`."""
    named = {
        token.strip().lower() for name, value in headers if name.lower() == b"connection" for token in value.split(b",")
    }
    return _HOP_BY_HOP | named


def _upstream_headers(scope: Scope, request_id: str) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop ones, plus the X-Forwarded-* set and the request id."""
    incoming: list[tuple[bytes, bytes]] = list(scope["headers"])
    drop = _hop_by_hop(incoming) | _OVERRIDDEN
    headers = [(name, value) for name, value in incoming if name.lower() not in drop]
    forwarded_for = [value for name, value in incoming if name.lower() == b"x-forwarded-for"]
    if scope.get("client"):
        forwarded_for.append(scope["client"][0].encode("latin-1"))
    if forwarded_for:
        headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    headers.append((b"x-forwarded-proto", scope["scheme"].encode("latin-1")))
    host = next((value for name, value in incoming if name.lower() == b"host"), None)
    if host is not None:
        headers.append((b"x-forwarded-host", host))
    headers.append((_REQUEST_ID, request_id.encode("latin-1")))
    return headers


class _Upstream:
    """One HTTP/1.1 exchange with an upstream, on a connection of its own (closed after it).

    Written on h11 rather than a client library because a proxy must read the answer while it
    still sends the body: an upstream may answer (a 413, a 401) before the body, and that answer
    must reach the client at once, with the rest of the body never read.
    """

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._h11 = h11.Connection(h11.CLIENT)

    async def send(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            await self._stream.send(data)

    async def next_event(self) -> h11.Event:
        """The upstream's next event (a 100, the response, a piece of body, its end)."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as error:
                raise _UpstreamFailed(str(error)) from None
            if event is not h11.NEED_DATA:
                return cast(h11.Event, event)
            try:
                data = await self._stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            if not data and self._h11.their_state is h11.SEND_RESPONSE:
                raise _UpstreamFailed("the upstream closed the connection before it answered")
            self._h11.receive_data(data)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()


async def _send_body(upstream: _Upstream, receive: Receive, done: anyio.Event) -> None:
    """The client's body to the upstream as it arrives (`_ClientGone` if the client leaves first)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        if chunk := message.get("body", b""):
            await upstream.send(h11.Data(data=chunk))
        if not message.get("more_body", False):
            await upstream.send(h11.EndOfMessage())
            done.set()
            return


async def _watch_disconnect(receive: Receive, body_done: anyio.Event, scope: anyio.CancelScope) -> None:
    """Cancel the exchange when the client goes away (uvicorn's `send` then silently drops data)."""
    # `receive` belongs to the body pump until the body has been read in full (or given up).
    await body_done.wait()
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _pump(
    upstream: _Upstream, receive: Receive, done: anyio.Event, exchange: anyio.CancelScope, gone: list[bool]
) -> None:
    """Send the body; when the client leaves, give up the whole exchange. An upstream that stops
    reading (it has answered) ends the pump quietly: its answer is what matters now."""
    try:
        await _send_body(upstream, receive, done)
    except _ClientGone:
        gone.append(True)
        exchange.cancel()
    except (anyio.BrokenResourceError, OSError, h11.LocalProtocolError):
        pass


async def _answer(upstream: _Upstream, receive: Receive, body_done: anyio.Event, has_body: bool) -> h11.Response:
    """The upstream's final answer, sending the client's body meanwhile if it asks for it.

    The upstream is asked to `Expect: 100-continue`: it says `100 Continue` when it reads the body,
    or gives its final answer at once (a `413` on the length alone), and then not a byte of the
    body is read from the client, who waits for the front door's own 100 before sending it.
    """
    event = await upstream.next_event()
    while isinstance(event, h11.InformationalResponse):
        if event.status_code == 100 and has_body and not body_done.is_set():
            gone: list[bool] = []
            # The body goes up while the answer is awaited: an answer that comes first ends the pump.
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_pump, upstream, receive, body_done, tasks.cancel_scope, gone)
                event = await upstream.next_event()
                tasks.cancel_scope.cancel()
            if gone:
                raise _ClientGone
        else:
            event = await upstream.next_event()
    if not isinstance(event, h11.Response):
        raise _UpstreamFailed(f"unexpected {type(event).__name__} before the answer")
    return event


async def _forward(
    scope: Scope, receive: Receive, send: Send, *, upstream_url: httpx.URL, body_done: anyio.Event
) -> None:
    """Send the request upstream and relay the answer; every failure ends here, never in uvicorn's log as a crash."""
    request_id = accept_or_generate(_header(scope, _REQUEST_ID))
    target = scope.get("raw_path") or scope["path"].encode("utf-8")
    if scope["query_string"]:
        target += b"?" + scope["query_string"]
    incoming: list[tuple[bytes, bytes]] = list(scope["headers"])
    length = next((value for name, value in incoming if name.lower() == b"content-length"), None)
    chunked = any(name.lower() == b"transfer-encoding" for name, _ in incoming)
    has_body = chunked or (length is not None and length.strip() != b"0")
    headers = [*_upstream_headers(scope, request_id), (b"connection", b"close")]
    if chunked:
        headers = [*((n, v) for n, v in headers if n.lower() != b"content-length"), (b"transfer-encoding", b"chunked")]
    if has_body:
        headers.append((b"expect", b"100-continue"))
    else:
        body_done.set()
    try:
        with anyio.fail_after(CONNECT_TIMEOUT):
            stream = await anyio.connect_tcp(upstream_url.host, upstream_url.port or 80)
    except (OSError, TimeoutError) as exc:
        logger.warning("upstream %s unreachable: %r", upstream_url, exc)
        detail = "The service behind this path is unavailable."
        await problem_response(503, detail, request_id, headers={REQUEST_ID_HEADER: request_id, "Retry-After": "5"})(
            scope, receive, send
        )
        return
    upstream = _Upstream(stream)
    try:
        try:
            await upstream.send(h11.Request(method=scope["method"], target=target, headers=headers))
            response = await _answer(upstream, receive, body_done, has_body)
        except _ClientGone:
            return
        except (_UpstreamFailed, anyio.BrokenResourceError, OSError, h11.LocalProtocolError) as exc:
            logger.warning("upstream %s failed before answering: %r", upstream_url, exc)
            detail = "The service behind this path failed to answer."
            await problem_response(502, detail, request_id, headers={REQUEST_ID_HEADER: request_id})(
                scope, receive, send
            )
            return
        body_done.set()  # whatever was not sent of the body will not be: the answer is in
        await _relay(upstream, response, request_id, send, upstream_url)
    finally:
        await upstream.aclose()


async def _relay(upstream: _Upstream, response: h11.Response, request_id: str, send: Send, url: httpx.URL) -> None:
    """The upstream's answer to the client, its body streamed as it comes."""
    raw = list(response.headers.raw_items())
    drop = _hop_by_hop(raw)
    headers = [(name, value) for name, value in raw if name.lower() not in drop]
    if not any(name.lower() == _REQUEST_ID for name, _ in headers):
        headers.append((_REQUEST_ID, request_id.encode("latin-1")))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    try:
        while not isinstance(event := await upstream.next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                await send({"type": "http.response.body", "body": bytes(event.data), "more_body": True})
    except (_UpstreamFailed, anyio.BrokenResourceError, OSError) as exc:
        # Headers are out: returning without finishing makes uvicorn close the client connection.
        logger.warning("upstream %s broke off its response: %r", url, exc)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _header(scope: Scope, name: bytes) -> str | None:
    value = next((v for k, v in scope["headers"] if k.lower() == name), None)
    return None if value is None else value.decode("latin-1")


def create_frontdoor(routes: Mapping[str, str], default: str | None = None) -> ASGIApp:
    """An ASGI app proxying each path prefix in `routes` (e.g. "/auth") to its upstream base URL, and every
    other path to `default` (web_service, as the ALB's default action) or, without one, a 404."""
    for prefix in routes:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"route prefix must start and not end with '/': {prefix!r}")
    # Longest first, so a nested prefix wins over its parent.
    table = sorted(((prefix, httpx.URL(url)) for prefix, url in routes.items()), key=lambda r: -len(r[0]))
    if default is not None:
        table.append(("", httpx.URL(default)))  # last: matches every path (its /metrics excepted)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})  # WebSockets are not routed
            return
        path: str = scope["path"]
        routed = next(((prefix, url) for prefix, url in table if path == prefix or path.startswith(prefix + "/")), None)
        if routed is None or path.removeprefix(routed[0]) in METRICS_PATHS:
            request_id = accept_or_generate(_header(scope, _REQUEST_ID))
            detail = f"No service is routed at {path}."
            await problem_response(404, detail, request_id, headers={REQUEST_ID_HEADER: request_id})(
                scope, receive, send
            )
            return
        body_done = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_watch_disconnect, receive, body_done, tasks.cancel_scope)
            await _forward(scope, receive, send, upstream_url=routed[1], body_done=body_done)
            tasks.cancel_scope.cancel()

    return app


def _parse_route(text: str) -> tuple[str, str]:
    prefix, sep, url = text.partition("=")
    if not sep or not url:
        raise argparse.ArgumentTypeError(f"expected PREFIX=URL, got {text!r}")
    return prefix, url


def main(argv: list[str] | None = None) -> None:
    """Run the front door under uvicorn until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack.frontdoor", description="Local path-routing reverse proxy (stands in for the ALB)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--route", type=_parse_route, action="append", required=True, metavar="PREFIX=URL")
    parser.add_argument("--default", metavar="URL", help="where every other path goes (web_service); else 404")
    args = parser.parse_args(argv)
    try:
        app = create_frontdoor(dict(args.route), default=args.default)
    except ValueError as exc:
        parser.error(str(exc))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=65,
        # The front door is the edge: a client's X-Forwarded-* must not rewrite its idea of the peer and scheme.
        proxy_headers=False,
        # Upstream `Server`/`Date` headers are relayed; uvicorn's own would duplicate them.
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
