"""web_service: the registry in a browser, at `/` and every path the three APIs do not serve.

It owns no data and no schema, so it does not use `common.app`'s factory (which opens a database
pool and answers problem documents): it shares the rest of the skeleton — settings, structured
logs with request ids, Prometheus metrics, `/health` and `/health/ready` — and answers pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from jinja2 import Environment, FileSystemLoader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from common import DEPOT_VERSION
from common.app import started_objects_frozen
from common.logging import configure_logging
from common.middleware import RequestContextMiddleware, RequestMetrics
from common.settings import load_settings
from web_service import filters
from web_service.fragments import Fragment
from web_service.routes import PACKAGE_CARD_FIELDS, VERSION_ROW_FIELDS, Web, not_a_page, routes
from web_service.security import SecurityHeaders
from web_service.sessions import SessionCookies
from web_service.settings import WebSettings
from web_service.upstream import Api

SERVICE = "web_service"
HERE = Path(__file__).parent
READY_TIMEOUT_SECONDS = 2.0

log = structlog.get_logger("depot.app")


class PageEnvironment(Environment):
    """Jinja2 for pages built from JSON: on a JSON object, `a.b` reads the key `b` first.

    Jinja2 tries an attribute first, and a dict has none of these: every `version.status` raised
    and caught an AttributeError, a tenth of a page's CPU. A key that is missing still falls back
    to Jinja2's own lookup (attributes, then Undefined). So iterate an object with `|dictsort`,
    never `.items()`, which a key named `items` would shadow.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def template_environment() -> Environment:
    """Jinja2 with autoescaping on for every template: user strings are text, never markup."""
    # Templates ship with the image and never change under a running process: no mtime check per render.
    environment = PageEnvironment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, auto_reload=False)
    filters.install(environment)
    environment.globals["version_rows"] = Fragment(environment, "_version_row.html", "v", VERSION_ROW_FIELDS)
    environment.globals["package_cards"] = Fragment(environment, "_package_card.html", "p", PACKAGE_CARD_FIELDS)
    return environment


def create_app(settings: WebSettings | None = None) -> Starlette:
    """The web_service app (`uvicorn --factory web_service.app:create_app`)."""
    settings = settings or load_settings(WebSettings)
    configure_logging(SERVICE, fmt=settings.effective_log_format, level=settings.log_level)
    metrics = RequestMetrics(SERVICE)
    api = Api(settings)
    assert settings.session_key is not None  # made in development, required in production
    web = Web(
        settings, api, SessionCookies(settings.session_key.get_secret_value(), secure=settings.secure_cookies),
        Jinja2Templates(env=template_environment()),
    )  # fmt: skip

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "service": SERVICE, "version": DEPOT_VERSION})

    async def ready(_: Request) -> Response:
        # The pages need the three APIs: each must answer its liveness check.
        async def check(service: str, prefix: str) -> str:
            try:
                response = await asyncio.wait_for(api.send("GET", service, f"{prefix}/health"), READY_TIMEOUT_SECONDS)  # type: ignore[arg-type]
            except (TimeoutError, Exception):  # noqa: BLE001 - any failure means "not ready"
                return "unavailable"
            return "ok" if response.status_code == 200 else "unavailable"

        names = {"auth": "/auth", "packages": "/packages", "validate": "/validate"}
        outcomes = await asyncio.gather(*(check(service, prefix) for service, prefix in names.items()))
        checks = dict(zip(names, outcomes, strict=True))
        ok = all(outcome == "ok" for outcome in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    async def metrics_text(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with api.open():
            app.state.web = web
            with started_objects_frozen():
                log.info("service_started", prefix="/", version=DEPOT_VERSION)
                yield
            log.info("service_stopping")

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/health/ready", ready, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            *routes(),
        ],
        middleware=[Middleware(RequestContextMiddleware, metrics=metrics), Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: not_a_page},
        lifespan=lifespan,
    )
