"""The skeleton every service stands on, driven through real apps against real PostgreSQL and S3."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import structlog
import structlog.testing
from pydantic import Field
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from auth_service.app import create_app as create_auth_app
from auth_service.settings import AuthSettings
from common import DEPOT_VERSION
from common.api import Call, Operation, QueryModel, RequestModel
from common.app import create_service_app
from common.db import transaction
from common.errors import Conflict
from common.http import service_client
from common.queue import enqueue
from common.settings import CommonSettings
from package_service.app import create_app as create_package_app
from package_service.settings import PackageSettings
from tests.conftest import Servers
from tests.helpers import eventually, in_process, real_server, service_settings
from validator_service.app import create_app as create_validator_app
from validator_service.settings import ValidatorSettings

HEX_ID = re.compile(r"[0-9a-f]{32}")
SECRET_MESSAGE = "password=hunter2 host=db.internal.example"


class Widget(RequestModel):
    name: str = Field(min_length=3)
    count: int


class WidgetOut(RequestModel):
    name: str
    count: int


class Page(QueryModel):
    limit: int = Field(default=20, ge=1, le=100)


async def create_widget(call: Call[Widget, None]) -> WidgetOut:
    await call.db.execute(text("INSERT INTO widgets (name) VALUES (:name)"), {"name": call.body.name})
    if call.body.name == "explode":
        raise RuntimeError(SECRET_MESSAGE)
    if call.body.name == "taken":
        raise Conflict("A widget with this name exists.")
    return WidgetOut(name=call.body.name, count=call.body.count)


async def list_widgets(call: Call[None, Page]) -> WidgetOut:
    names = (await call.db.execute(text("SELECT name FROM widgets ORDER BY name"))).scalars().all()
    return WidgetOut(name=",".join(names), count=call.query.limit)


SPAWNED: list[str] = []


async def noop(call: Call[None, None]) -> None:
    async def later() -> None:
        await asyncio.sleep(0.3)  # outlives the request: the app waits for it when it stops
        SPAWNED.append(call.request.headers.get("x-request-id", ""))

    call.resources.spawn(later(), "test_later")


async def echo_upstream(call: Call[None, None]) -> JSONResponse:
    async with service_client(call.request.query_params["upstream"]) as client:
        response = await client.get("/echo")
    return JSONResponse(response.json())


OPERATIONS = [
    Operation(
        "POST",
        "/widgets",
        create_widget,
        "Create a widget.",
        auth="none",
        body=Widget,
        response=WidgetOut,
        status_code=201,
    ),
    Operation("GET", "/widgets", list_widgets, "List widgets.", auth="none", query=Page, response=WidgetOut),
    Operation("GET", "/forward", echo_upstream, "Call another service.", auth="none"),
    Operation("POST", "/noop", noop, "Nothing, then something after the response.", auth="none", status_code=204),
]


@pytest.fixture
async def widgets(servers: Servers, database_url: str, bucket: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = PackageSettings(**service_settings(servers, database_url, bucket))
    app = create_service_app(service="widget_service", prefix="/widgets-api", settings=settings, operations=OPERATIONS)
    async with in_process(app) as client:
        await client.get("/widgets-api/health")
        async with app.state.resources.engine.begin() as connection:
            await connection.execute(text("CREATE TABLE widgets (name text PRIMARY KEY)"))
        yield client


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == "about:blank"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


SERVICES: list[tuple[str, str, Callable[..., Starlette], type[CommonSettings], set[str]]] = [
    ("auth_service", "/auth", create_auth_app, AuthSettings, {"database"}),
    ("package_service", "/packages", create_package_app, PackageSettings, {"database", "s3", "queue", "verdicts"}),
    (
        "validator_service",
        "/validate",
        create_validator_app,
        ValidatorSettings,
        {"database", "s3", "queue", "validation"},
    ),
]


@pytest.mark.parametrize(("name", "prefix", "factory", "settings_class", "checks"), SERVICES)
async def test_each_service_answers_health_readiness_openapi_and_docs(
    servers: Servers,
    database_url: str,
    bucket: str,
    name: str,
    prefix: str,
    factory: Callable[..., Starlette],
    settings_class: type[CommonSettings],
    checks: set[str],
) -> None:
    settings = settings_class(**service_settings(servers, database_url, bucket))
    async with in_process(factory(settings)) as client:
        health = await client.get(f"{prefix}/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "service": name, "version": DEPOT_VERSION}
        assert HEX_ID.fullmatch(health.headers["x-request-id"])

        async def ready_response() -> httpx.Response | None:  # as a load balancer does: background connections first
            response = await client.get(f"{prefix}/health/ready")
            return response if response.status_code == 200 else None

        ready = await eventually(ready_response, message=f"{prefix}/health/ready")
        assert ready.json() == {"status": "ok", "checks": dict.fromkeys(checks, "ok")}

        document = (await client.get(f"{prefix}/openapi.json")).json()
        assert document["openapi"] == "3.1.0"
        assert {f"{prefix}/health", f"{prefix}/health/ready"} <= set(document["paths"])

        docs = await client.get(f"{prefix}/docs")
        assert docs.status_code == 200
        assert f'data-url="{prefix}/openapi.json"' in docs.text
        assert "cdn" not in docs.text.lower()
        for asset in re.findall(r'(?:src|href)="([^"]+)"', docs.text):
            assert asset.startswith(f"{prefix}/docs/assets/")
            assert (await client.get(asset)).status_code == 200, asset


async def test_request_id_is_echoed_when_valid_and_replaced_otherwise(widgets: httpx.AsyncClient) -> None:
    echoed = await widgets.get("/widgets-api/health", headers={"X-Request-ID": "abc.DEF_123-x"})
    assert echoed.headers["x-request-id"] == "abc.DEF_123-x"
    for bad in ("has space", "x" * 129, "semi;colon", ""):
        replaced = await widgets.get("/widgets-api/health", headers={"X-Request-ID": bad})
        assert HEX_ID.fullmatch(replaced.headers["x-request-id"]), bad


async def test_routing_errors_are_problem_documents(widgets: httpx.AsyncClient) -> None:
    assert_problem(await widgets.get("/widgets-api/nothing-here"), 404)
    assert_problem(await widgets.get("/elsewhere"), 404)
    not_allowed = await widgets.delete("/widgets-api/health")
    assert_problem(not_allowed, 405)
    assert "GET" in not_allowed.headers["allow"]


async def test_valid_body_is_accepted_and_committed(widgets: httpx.AsyncClient) -> None:
    created = await widgets.post("/widgets-api/widgets", json={"name": "gear", "count": 3})
    assert created.status_code == 201
    assert created.json() == {"name": "gear", "count": 3}
    listed = await widgets.get("/widgets-api/widgets", params={"limit": 5})
    assert listed.json() == {"name": "gear", "count": 5}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "gear", "count": 1, "roles": ["admin"]}, ["body", "roles"]),
        ({"name": "gear"}, ["body", "count"]),
        ({"name": "ge", "count": 1}, ["body", "name"]),
        ({"name": "gear", "count": "many"}, ["body", "count"]),
        (["not", "an", "object"], ["body"]),
    ],
)
async def test_invalid_bodies_are_400_with_the_failing_field(
    widgets: httpx.AsyncClient, body: object, loc: list[str]
) -> None:
    problem = assert_problem(await widgets.post("/widgets-api/widgets", json=body), 400)
    assert loc in [error["loc"] for error in problem["errors"]]
    assert all(set(error) == {"loc", "msg"} for error in problem["errors"])


async def test_unreadable_bodies_are_refused(widgets: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "application/json"}
    assert_problem(await widgets.post("/widgets-api/widgets", content=b"{not json", headers=headers), 400)
    assert_problem(await widgets.post("/widgets-api/widgets", content=b"\xff\xfe", headers=headers), 400)
    plain = {"Content-Type": "text/plain"}
    assert_problem(await widgets.post("/widgets-api/widgets", content=b"{}", headers=plain), 415)
    huge = b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'", "count": 1}'
    assert_problem(await widgets.post("/widgets-api/widgets", content=huge, headers=headers), 413)


async def test_invalid_query_is_400(widgets: httpx.AsyncClient) -> None:
    problem = assert_problem(await widgets.get("/widgets-api/widgets", params={"limit": 1000}), 400)
    assert problem["errors"][0]["loc"] == ["query", "limit"]


async def test_domain_errors_roll_back_the_request(widgets: httpx.AsyncClient) -> None:
    assert_problem(await widgets.post("/widgets-api/widgets", json={"name": "taken", "count": 1}), 409)
    listed = await widgets.get("/widgets-api/widgets")
    assert listed.json()["name"] == ""


async def test_unexpected_exception_is_a_bare_500_and_logged_with_the_request_id(
    capsys: pytest.CaptureFixture[str], widgets: httpx.AsyncClient
) -> None:
    response = await widgets.post(
        "/widgets-api/widgets", json={"name": "explode", "count": 1}, headers={"X-Request-ID": "boom-1"}
    )
    problem = assert_problem(response, 500)
    assert problem["request_id"] == "boom-1"
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert "Traceback" not in response.text
    assert (await widgets.get("/widgets-api/widgets")).json()["name"] == "", "the insert was rolled back"

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    failure = next(line for line in lines if line["event"] == "request_failed")
    assert failure["request_id"] == "boom-1"
    assert "RuntimeError" in failure["exception"]
    access = next(line for line in lines if line["event"] == "request" and line["request_id"] == "boom-1")
    assert access["status"] == 500


async def test_access_log_has_route_template_and_never_secrets(
    capsys: pytest.CaptureFixture[str], widgets: httpx.AsyncClient
) -> None:
    capsys.readouterr()
    await widgets.get(
        "/widgets-api/widgets?limit=3&token=s3cr3t-query",
        headers={"Authorization": "Bearer s3cr3t-header", "X-Request-ID": "log-1"},
    )
    output = capsys.readouterr().err
    assert "s3cr3t" not in output
    access = [json.loads(line) for line in output.splitlines() if '"event": "request"' in line]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == "log-1"
    assert line["service"] == "widget_service"
    assert line["method"] == "GET"
    assert line["route"] == "/widgets-api/widgets"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)


async def test_the_access_log_status_is_a_plain_number(widgets: httpx.AsyncClient) -> None:
    with structlog.testing.capture_logs() as logs:
        assert (await widgets.post("/widgets-api/noop")).status_code == 204
    (access,) = [line for line in logs if line["event"] == "request"]
    assert type(access["status"]) is int  # not HTTPStatus.NO_CONTENT, which consoles print as its repr
    assert access["status"] == 204


async def test_tasks_a_request_starts_are_awaited_when_the_service_stops(
    servers: Servers, database_url: str, bucket: str
) -> None:
    settings = PackageSettings(**service_settings(servers, database_url, bucket))
    app = create_service_app(service="widget_service", prefix="/widgets-api", settings=settings, operations=OPERATIONS)
    async with in_process(app) as client:
        response = await client.post("/widgets-api/noop", headers={"X-Request-ID": "spawned-1"})
        assert response.status_code == 204
        assert "spawned-1" not in SPAWNED, "it runs after the response"
    assert "spawned-1" in SPAWNED, "the app waited for it before it stopped"


async def test_metrics_count_requests_by_route_template(widgets: httpx.AsyncClient) -> None:
    await widgets.get("/widgets-api/widgets")
    await widgets.get("/widgets-api/missing/123")
    metrics = (await widgets.get("/widgets-api/metrics")).text
    assert 'route="/widgets-api/widgets",service="widget_service",status="200"' in metrics
    assert 'route="unmatched"' in metrics
    assert "missing/123" not in metrics


async def test_openapi_is_generated_from_the_validating_models(widgets: httpx.AsyncClient) -> None:
    document = (await widgets.get("/widgets-api/openapi.json")).json()
    operation = document["paths"]["/widgets-api/widgets"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "count"}
    assert "201" in operation["responses"]
    assert operation["responses"]["400"]["content"]["application/problem+json"]
    query = document["paths"]["/widgets-api/widgets"]["get"]["parameters"]
    assert query[0]["name"] == "limit"
    assert query[0]["in"] == "query"
    refs = re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(document))
    assert refs
    assert all(name in document["components"]["schemas"] for name in refs)


async def test_unknown_docs_asset_is_404(widgets: httpx.AsyncClient) -> None:
    assert_problem(await widgets.get("/widgets-api/docs/assets/..%2F..%2Fsecrets"), 404)
    assert_problem(await widgets.get("/widgets-api/docs/assets/swagger-editor-bundle.js"), 404)


async def test_outgoing_calls_forward_the_request_id(widgets: httpx.AsyncClient) -> None:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"request_id": request.headers.get("x-request-id")})

    async with real_server(Starlette(routes=[Route("/echo", echo)])) as upstream:
        response = await widgets.get(
            "/widgets-api/forward", params={"upstream": upstream}, headers={"X-Request-ID": "fwd-42"}
        )
    assert response.json() == {"request_id": "fwd-42"}


async def test_metrics_publish_queue_depth(servers: Servers, database_url: str, bucket: str) -> None:
    app = create_package_app(PackageSettings(**service_settings(servers, database_url, bucket)))
    async with in_process(app) as client:
        async with transaction(app.state.resources.sessions) as session:
            for key in ("v1", "v2"):
                assert await enqueue(session, "validation", key, {"version_id": key})
        metrics = (await client.get("/packages/metrics")).text
    assert 'depot_queue_jobs{queue="validation",status="queued"} 2.0' in metrics


async def test_package_readiness_follows_the_verdict_listener(servers: Servers, database_url: str, bucket: str) -> None:
    app = create_package_app(PackageSettings(**service_settings(servers, database_url, bucket)))
    async with in_process(app) as client:

        async def has_status(status: int, verdicts: str) -> bool:
            response = await client.get("/packages/health/ready")
            return (response.status_code, response.json()["checks"]["verdicts"]) == (status, verdicts)

        await eventually(lambda: has_status(200, "ok"))
        admin = await servers.admin()
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'depot queue listener verdicts'"
            )
        finally:
            await admin.close()
        assert killed == 1
        await eventually(lambda: has_status(503, "unavailable"), interval=0.02)
        await eventually(lambda: has_status(200, "ok"), interval=0.1)
