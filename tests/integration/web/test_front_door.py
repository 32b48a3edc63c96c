"""The `make run` front door sends every path outside the three prefixes to web_service."""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from devstack.frontdoor import create_frontdoor
from tests.helpers import in_process, real_server


def stand_in(name: str):  # type: ignore[no-untyped-def]
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await PlainTextResponse(f"{name} {scope['path']}")(scope, receive, send)

    return app


async def test_the_default_route_goes_to_the_pages() -> None:
    async with (
        real_server(stand_in("auth")) as auth,
        real_server(stand_in("web")) as web,
        in_process(create_frontdoor({"/auth": auth}, default=web)) as door,
    ):
        assert (await door.get("/")).text == "web /"
        assert (await door.get("/p/x/1.0.0")).text == "web /p/x/1.0.0"
        assert (await door.get("/authority")).text == "web /authority"
        assert (await door.get("/auth/login")).text == "auth /auth/login"
        for path in ("/metrics", "/auth/metrics"):
            assert (await door.get(path)).status_code == 404
