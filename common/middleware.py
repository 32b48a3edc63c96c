"""Request context for every request: id, structured access log, metrics, and problem documents."""

from __future__ import annotations

import time
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import exception_response
from common.requestid import REQUEST_ID_HEADER, accept_or_generate, current_request_id

log = structlog.get_logger("depot.access")

CLIENT_CLOSED_REQUEST = 499
"""The status recorded (never sent) for a request whose client disconnected before its answer (nginx's code)."""

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RequestMetrics:
    """Prometheus counters for one app; a registry per app keeps apps (and tests) apart."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "depot_http_requests_total", "HTTP requests by route and status.",
            ["service", "method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "depot_http_request_duration_seconds", "HTTP request duration by route.",
            ["service", "method", "route"], buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.service = service

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(self.service, method, route, str(status)).inc()
        self.duration.labels(self.service, method, route).observe(seconds)


def route_template(scope: Scope) -> str:
    """The route's path template (`/packages/{name}`), never the raw path with its values."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def mark_transfer(scope: Scope) -> None:
    """Say that this request moves artifact bytes (a streamed upload or a relayed download).

    Its access line then says `"transfer": true`: its duration follows the size of the artifact and
    the client's bandwidth, so the deployment's latency metric leaves it out.
    """
    scope.setdefault("state", {})["transfer"] = True


def request_id_of(request: Request) -> str | None:
    """The id of the request being served."""
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else current_request_id.get()


async def handle_exception(request: Request, error: Exception) -> Response:
    """Starlette exception handler: the same rendering as everything else."""
    return exception_response(error, request_id_of(request))


class RequestContextMiddleware:
    """Outermost middleware of every service (pure ASGI, so streaming bodies pass untouched)."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = accept_or_generate(Headers(scope=scope).get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        token = current_request_id.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])  # a plain number in the access log, not an HTTPStatus
                response_started = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id, service=self.metrics.service):
            try:
                await self.app(scope, receive, send_with_id)
            except ClientDisconnect:
                # The client went away mid-request: nobody to answer, and no fault of the service's.
                status = CLIENT_CLOSED_REQUEST
                log.info("client_disconnected")
            except Exception as error:
                response = exception_response(error, request_id)
                status = response.status_code
                if status >= 500:
                    log.exception("request_failed", error_type=type(error).__name__)
                if not response_started:
                    await response(scope, receive, send_with_id)
            finally:
                current_request_id.reset(token)
                self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        method: str = scope["method"]
        self.metrics.observe(method, route, status, seconds)
        state = scope.get("state", {})
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "transfer": bool(state.get("transfer", False)),
        }
        user = state.get("username")
        if user is not None:
            fields["user"] = user
        log.info("request", **fields)
