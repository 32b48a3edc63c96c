"""The app factory every service calls: its prefix, operations, lifespan and readiness checks.

It gives each service the same skeleton: request ids, access logs and metrics, problem documents,
a database pool and (where the service stores bytes) S3 clients for the app's lifetime,
`/health`, `/health/ready`, `/openapi.json`, `/docs` and `/metrics` under the prefix. Requests are
served by `common.endpoints`; what a service declares is in `common.api`.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from common import DEPOT_VERSION
from common.api import Operation
from common.auth import KeySet, TokenVerifier
from common.db import check_database, create_engine, create_sessionmaker
from common.docs import docs_asset, docs_page
from common.endpoints import endpoint, resources_of
from common.errors import DepotError
from common.health import health_operations
from common.logging import configure_logging
from common.middleware import RequestContextMiddleware, RequestMetrics, handle_exception
from common.openapi import openapi_document
from common.queue import check_queue
from common.queue_metrics import QueueDepthGauge
from common.resources import ConfirmCaller, Resources
from common.s3 import open_s3
from common.settings import CommonSettings, S3Settings

log = structlog.get_logger("depot.app")

ServiceLifespan = Callable[[Resources], AbstractAsyncContextManager[None]]

SHUTDOWN_DRAIN_SECONDS = 10.0
"""How long the tasks that requests started may take to finish when the service stops."""


def _build_verifier(settings: CommonSettings, token_keys: KeySet | None) -> TokenVerifier | None:
    keys = token_keys
    if settings.auth_public_keys:
        configured = KeySet.from_pem_bundle(settings.auth_public_keys)
        keys = configured if keys is None else keys.merge(configured)
    if keys is None and settings.auth_jwks_url is None:
        return None
    return TokenVerifier(settings.jwt_issuer, keys=keys, jwks_url=settings.auth_jwks_url)


_collected = False
"""Whether this process made its full collection before freezing (`started_objects_frozen`)."""


@contextmanager
def started_objects_frozen() -> Iterator[None]:
    """For a service's running life, with what exists once it has started frozen.

    What exists then (modules, the app, its clients) lives as long as the process: it is moved out
    of the garbage collector's way (`gc.freeze`). Requests in flight keep the objects of the moment
    alive past the young generations, so under load the collector made a full pass over everything
    every few seconds: 140-150 ms during which no request was served. With the start-up objects
    frozen, a full pass takes a few ms.

    The full collection that keeps start-up garbage out of the frozen set is made once per process.
    A process that starts many apps (the tests: 0.1-0.3 s of CPU per start) only freezes for the
    later ones; every app unfreezes at shutdown, so whatever was frozen is collected as usual.
    """
    global _collected  # noqa: PLW0603 - once per process, by design
    if not _collected:
        gc.collect()
        _collected = True
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _routes(prefix: str, operations: Sequence[Operation]) -> list[BaseRoute]:
    """One route per path, serving each of its operations by method: a `405` then lists them all in `Allow`."""
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for op in operations:
        by_path.setdefault(op.path, {})[op.method] = endpoint(op)
    routes: list[BaseRoute] = []
    for path, endpoints in by_path.items():

        async def by_method(
            request: Request, endpoints: dict[str, Callable[[Request], Awaitable[Response]]] = endpoints
        ) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await endpoints[method](request)

        routes.append(Route(prefix + path, by_method, methods=list(endpoints)))
    return routes


def create_service_app(
    *,
    service: str,
    prefix: str,
    settings: CommonSettings,
    operations: Sequence[Operation] = (),
    lifespan: ServiceLifespan | None = None,
    uses_queue: bool = False,
    token_keys: KeySet | None = None,
    confirm_caller: ConfirmCaller | None = None,
    description: str = "",
) -> Starlette:
    """A service's Starlette app, serving everything under `prefix` (the load balancer keeps it)."""
    configure_logging(service, fmt=settings.effective_log_format, level=settings.log_level)
    metrics = RequestMetrics(service)
    standard = health_operations(service)
    all_operations = [*standard, *operations]
    duplicates = [name for name, count in Counter(op.operation_id for op in all_operations).items() if count > 1]
    if duplicates:
        raise ValueError(f"operation ids must be unique: {duplicates}")
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

    queue_gauge = QueueDepthGauge(metrics.registry)

    async def metrics_text(request: Request) -> Response:
        if uses_queue:
            await queue_gauge.refresh(resources_of(request).engine, settings.ready_check_timeout_seconds)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # The service's own routes come last, so that `/<prefix>/{name}` never shadows these.
    routes: list[BaseRoute] = _routes(prefix, standard)
    routes += [
        Route(f"{prefix}/openapi.json", openapi, methods=["GET"]),
        Route(f"{prefix}/docs", docs, methods=["GET"]),
        Route(f"{prefix}/docs/assets/{{asset}}", docs_asset, methods=["GET"]),
        Route(f"{prefix}/metrics", metrics_text, methods=["GET"]),
    ]
    routes += _routes(prefix, operations)

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
            state = Resources(settings, engine, create_sessionmaker(engine), s3, verifier, confirm_caller)
            # Runs before the pool and the clients close (the stack unwinds in reverse).
            stack.push_async_callback(state.drain, SHUTDOWN_DRAIN_SECONDS)
            state.checks["database"] = lambda: check_database(engine)
            if s3 is not None:
                state.checks["s3"] = s3.check_bucket
            if uses_queue:
                state.checks["queue"] = lambda: check_queue(engine)
            app.state.resources = state
            if lifespan is not None:
                await stack.enter_async_context(lifespan(state))
            stack.enter_context(started_objects_frozen())
            log.info("service_started", prefix=prefix, version=DEPOT_VERSION)
            yield
            log.info("service_stopping")

    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestContextMiddleware, metrics=metrics)],
        exception_handlers={HTTPException: handle_exception, DepotError: handle_exception},
        lifespan=app_lifespan,
    )
