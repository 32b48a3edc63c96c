"""The app factory every service calls: its prefix, operations, lifespan and readiness checks.

It gives each service the same skeleton: request ids, access logs and metrics, problem documents,
a database pool and (where the service stores bytes) S3 clients for the app's lifetime,
`/health`, `/health/ready`, `/openapi.json`, `/docs` and `/metrics` under the prefix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from common import DEPOT_VERSION
from common.api import Call, Operation, openapi_document, read_json_body, read_query, render_result
from common.auth import KeySet, Principal, TokenVerifier, bearer_token
from common.db import check_database, create_engine, create_sessionmaker, transaction
from common.docs import docs_asset, docs_page
from common.errors import DepotError, ServiceUnavailable, Unauthorized
from common.logging import configure_logging
from common.middleware import RequestContextMiddleware, RequestMetrics, handle_exception
from common.queue import check_queue, queue_depth
from common.s3 import S3, open_s3
from common.settings import CommonSettings, S3Settings

log = structlog.get_logger("depot.app")

Check = Callable[[], Awaitable[object]]


@dataclass
class Resources:
    """What a running service holds for its lifetime; handlers reach it through `resources(request)`."""

    settings: CommonSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    s3: S3 | None
    verifier: TokenVerifier | None
    checks: dict[str, Check] = field(default_factory=dict)


ServiceLifespan = Callable[[Resources], AbstractAsyncContextManager[None]]


class ServiceBound:
    """Work that outlives a request and uses the running service's resources (bound in its lifespan)."""

    _resources: Resources | None = None

    def bind(self, bound: Resources) -> None:
        """Give the running service's resources to this object."""
        self._resources = bound

    @property
    def _bound(self) -> Resources:
        if self._resources is None:
            raise RuntimeError("the service is not running")
        return self._resources

    @property
    def _s3(self) -> S3:
        s3 = self._bound.s3
        if s3 is None:
            raise RuntimeError("this service runs without S3")
        return s3


def resources(request: Request) -> Resources:
    """The running service's resources."""
    found: Resources = request.app.state.resources
    return found


async def authenticated(call: Call[Any, Any]) -> Principal:
    """The caller, from a verified `Authorization: Bearer` access token; `401` otherwise.

    From here on the request's log lines carry the username.
    """
    token = bearer_token(call.request.headers.get("authorization"))
    if token is None:
        raise Unauthorized()
    verifier = resources(call.request).verifier
    if verifier is None:
        raise ServiceUnavailable("Token verification is not configured.")
    principal = await verifier.verify(token)
    call.request.scope.setdefault("state", {})["username"] = principal.username
    structlog.contextvars.bind_contextvars(user=principal.username)
    return principal


def _build_verifier(settings: CommonSettings, token_keys: KeySet | None) -> TokenVerifier | None:
    keys = token_keys
    if settings.auth_public_keys:
        configured = KeySet.from_pem_bundle(settings.auth_public_keys)
        keys = configured if keys is None else keys.merge(configured)
    if keys is None and settings.auth_jwks_url is None:
        return None
    return TokenVerifier(settings.jwt_issuer, keys=keys, jwks_url=settings.auth_jwks_url)


class Health(BaseModel):
    status: Literal["ok"]
    service: str
    version: str


class Readiness(BaseModel):
    status: Literal["ok"]
    checks: dict[str, str]


async def _run_check(check: Check, limit_seconds: float) -> str:
    try:
        await asyncio.wait_for(check(), limit_seconds)
    except TimeoutError:
        return "timeout"
    except Exception as error:  # noqa: BLE001 - any failure of a dependency means "not ready"
        # The reason goes to the log only: it can name internal hosts.
        log.warning("readiness_check_failed", error_type=type(error).__name__, error=str(error)[:300])
        return "unavailable"
    return "ok"


async def _refresh_queue_depth(engine: AsyncEngine, gauge: Gauge, limit_seconds: float) -> None:
    # Read at scrape time; when the database is down the metric is left out rather than stale.
    gauge.clear()
    try:
        depth = await asyncio.wait_for(queue_depth(engine), limit_seconds)
    except Exception as error:  # noqa: BLE001 - metrics must answer even while the database is down
        log.warning("queue_depth_unavailable", error_type=type(error).__name__)
        return
    for (queue, status), count in depth.items():
        gauge.labels(queue, status).set(count)


def _endpoint(operation: Operation) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        body = await read_json_body(request, operation.body) if operation.body is not None else None
        query = read_query(request, operation.query) if operation.query is not None else None
        kept_error: DepotError | None = None
        async with transaction(resources(request).sessions) as session:
            call = Call(request, body, query, session)
            try:
                result = await operation.handler(call)
            except DepotError as error:
                if not error.keep_changes:
                    raise
                kept_error = error
        for action in call.after_commit:
            try:
                await action()
            except Exception as error:  # noqa: BLE001 - the request succeeded; what failed here is swept later
                log.warning("after_commit_failed", error_type=type(error).__name__, error=str(error)[:300])
        if kept_error is not None:
            raise kept_error
        return render_result(result, operation.status_code)

    endpoint.__name__ = operation.handler.__name__
    return endpoint


def create_service_app(
    *,
    service: str,
    prefix: str,
    settings: CommonSettings,
    operations: Sequence[Operation] = (),
    lifespan: ServiceLifespan | None = None,
    uses_queue: bool = False,
    token_keys: KeySet | None = None,
    description: str = "",
) -> Starlette:
    """A service's Starlette app, serving everything under `prefix` (the load balancer keeps it)."""
    configure_logging(service, fmt=settings.effective_log_format, level=settings.log_level)
    metrics = RequestMetrics(service)

    async def health(_: Call[None, None]) -> Health:
        return Health(status="ok", service=service, version=DEPOT_VERSION)

    async def ready(call: Call[None, None]) -> Readiness:
        checks = resources(call.request).checks
        timeout = settings.ready_check_timeout_seconds
        outcomes = await asyncio.gather(*(_run_check(check, timeout) for check in checks.values()))
        results = dict(zip(checks, outcomes, strict=True))
        failing = [name for name, outcome in results.items() if outcome != "ok"]
        if failing:
            raise ServiceUnavailable(f"Not ready: {', '.join(failing)}.", extensions={"checks": results})
        return Readiness(status="ok", checks=results)

    standard = [
        Operation("GET", "/health", health, "Liveness: the process answers (checks no dependency).",
                  response=Health, tags=("health",)),
        Operation("GET", "/health/ready", ready, "Readiness: every dependency answers.",
                  response=Readiness, tags=("health",)),
    ]  # fmt: skip
    all_operations = [*standard, *operations]
    document: dict[str, Any] | None = None

    async def openapi(_: Request) -> Response:
        nonlocal document
        if document is None:
            document = openapi_document(
                title=f"Depot {service}", version=DEPOT_VERSION, prefix=prefix,
                operations=all_operations, description=description,
            )  # fmt: skip
        return JSONResponse(document)

    async def docs(_: Request) -> Response:
        return docs_page(prefix, f"Depot {service}")

    queue_jobs = Gauge(
        "depot_queue_jobs", "Jobs in the queue by queue and status (done jobs not counted).",
        ["queue", "status"], registry=metrics.registry,
    )  # fmt: skip

    async def metrics_text(request: Request) -> Response:
        if uses_queue:
            await _refresh_queue_depth(resources(request).engine, queue_jobs, settings.ready_check_timeout_seconds)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # The service's own routes come last, so that `/<prefix>/{name}` never shadows these.
    routes: list[BaseRoute] = [Route(prefix + op.path, _endpoint(op), methods=[op.method]) for op in standard]
    routes += [
        Route(f"{prefix}/openapi.json", openapi, methods=["GET"]),
        Route(f"{prefix}/docs", docs, methods=["GET"]),
        Route(f"{prefix}/docs/assets/{{asset}}", docs_asset, methods=["GET"]),
        Route(f"{prefix}/metrics", metrics_text, methods=["GET"]),
    ]
    routes += [Route(prefix + op.path, _endpoint(op), methods=[op.method]) for op in operations]

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # Nothing here connects: a service starts while its dependencies are down, and
            # readiness says so until they return.
            engine = create_engine(settings, f"depot-{service}")
            stack.push_async_callback(engine.dispose)
            s3 = await stack.enter_async_context(open_s3(settings)) if isinstance(settings, S3Settings) else None
            verifier = _build_verifier(settings, token_keys)
            if verifier is not None:
                stack.push_async_callback(verifier.aclose)
            state = Resources(settings, engine, create_sessionmaker(engine), s3, verifier)
            state.checks["database"] = lambda: check_database(engine)
            if s3 is not None:
                state.checks["s3"] = s3.check_bucket
            if uses_queue:
                state.checks["queue"] = lambda: check_queue(engine)
            app.state.resources = state
            if lifespan is not None:
                await stack.enter_async_context(lifespan(state))
            log.info("service_started", prefix=prefix, version=DEPOT_VERSION)
            yield
            log.info("service_stopping")

    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestContextMiddleware, metrics=metrics)],
        exception_handlers={HTTPException: handle_exception, DepotError: handle_exception},
        lifespan=app_lifespan,
    )
