"""The local front door: a path-routing reverse proxy that stands in for the AWS ALB.

Requests whose path is a configured prefix (or lies below it) go, unchanged, to that prefix's
upstream; anything else gets a 404 problem document. Bodies stream both ways with backpressure,
so multi-GB uploads and downloads pass through in constant memory.

    python -m devstack.frontdoor --port 8080 --route /auth=http://127.0.0.1:8101 ...
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy

import anyio
import httpx
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


def _new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        # Only connecting is bounded: a body may legitimately take minutes to move.
        timeout=httpx.Timeout(None, connect=5.0, pool=10.0),
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        # A proxy must neither pick up HTTP_PROXY/.netrc nor keep its users' cookies.
        trust_env=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


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


async def _request_body(receive: Receive, done: anyio.Event) -> AsyncIterator[bytes]:
    """Yield the client's body as it arrives; raising on disconnect makes httpx drop the upstream connection."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        if chunk := message.get("body", b""):
            yield chunk
        if not message.get("more_body", False):
            done.set()
            return


async def _watch_disconnect(receive: Receive, body_done: anyio.Event, scope: anyio.CancelScope) -> None:
    """Cancel the exchange when the client goes away (uvicorn's `send` then silently drops data)."""
    # `receive` belongs to the body stream until the body has been read in full.
    await body_done.wait()
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    client: httpx.AsyncClient,
    upstream: httpx.URL,
    body_done: anyio.Event,
) -> None:
    """Send the request upstream and relay the answer; every failure ends here, never in uvicorn's log as a crash."""
    request_id = accept_or_generate(_header(scope, _REQUEST_ID))
    target = scope.get("raw_path") or scope["path"].encode("utf-8")
    if scope["query_string"]:
        target += b"?" + scope["query_string"]
    has_body = any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"])
    request = httpx.Request(
        scope["method"],
        upstream.copy_with(raw_path=target),
        headers=_upstream_headers(scope, request_id),
        content=_request_body(receive, body_done) if has_body else None,
    )
    if not has_body:
        body_done.set()
    try:
        response = await client.send(request, stream=True)
    except _ClientGone:
        return
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        logger.warning("upstream %s unreachable: %r", upstream, exc)
        detail = "The service behind this path is unavailable."
        await problem_response(503, detail, request_id, headers={REQUEST_ID_HEADER: request_id, "Retry-After": "5"})(
            scope, receive, send
        )
        return
    except httpx.TransportError as exc:
        logger.warning("upstream %s failed before answering: %r", upstream, exc)
        detail = "The service behind this path failed to answer."
        await problem_response(502, detail, request_id, headers={REQUEST_ID_HEADER: request_id})(scope, receive, send)
        return
    body_done.set()  # httpx has stopped reading the body, whether or not it was all sent
    try:
        raw = response.headers.raw
        drop = _hop_by_hop(raw)
        headers = [(name, value) for name, value in raw if name.lower() not in drop]
        if not any(name.lower() == _REQUEST_ID for name, _ in headers):
            headers.append((_REQUEST_ID, request_id.encode("latin-1")))
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except httpx.TransportError as exc:
        # Headers are out: returning without finishing makes uvicorn close the client connection.
        logger.warning("upstream %s broke off its response: %r", upstream, exc)
    finally:
        with anyio.CancelScope(shield=True):
            await response.aclose()


def _header(scope: Scope, name: bytes) -> str | None:
    value = next((v for k, v in scope["headers"] if k.lower() == name), None)
    return None if value is None else value.decode("latin-1")


def create_frontdoor(routes: Mapping[str, str]) -> ASGIApp:
    """An ASGI app proxying each path prefix in `routes` (e.g. "/auth") to its upstream base URL."""
    for prefix in routes:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"route prefix must start and not end with '/': {prefix!r}")
    # Longest first, so a nested prefix wins over its parent.
    table = sorted(((prefix, httpx.URL(url)) for prefix, url in routes.items()), key=lambda r: -len(r[0]))
    state: dict[str, httpx.AsyncClient] = {}

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                state["client"] = _new_client()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if "client" in state:
                    await state.pop("client").aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})  # WebSockets are not routed
            return
        path: str = scope["path"]
        upstream = next((url for prefix, url in table if path == prefix or path.startswith(prefix + "/")), None)
        if upstream is None:
            request_id = accept_or_generate(_header(scope, _REQUEST_ID))
            detail = f"No service is routed at {path}."
            await problem_response(404, detail, request_id, headers={REQUEST_ID_HEADER: request_id})(
                scope, receive, send
            )
            return
        if "client" not in state:
            raise RuntimeError("the front door needs the ASGI lifespan to run (it owns the upstream client)")
        body_done = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_watch_disconnect, receive, body_done, tasks.cancel_scope)
            await _forward(scope, receive, send, client=state["client"], upstream=upstream, body_done=body_done)
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
    args = parser.parse_args(argv)
    try:
        app = create_frontdoor(dict(args.route))
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
