"""The headers every answer of web_service carries (`SecurityHeaders`), without servers."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from web_service.security import CONTENT_SECURITY_POLICY, SecurityHeaders


def answering(headers: list[tuple[bytes, bytes]]) -> SecurityHeaders:
    async def app(_scope: Scope, _receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    return SecurityHeaders(app)


async def headers_sent(path: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await answering(headers)({"type": "http", "path": path}, receive, send)
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    return list(sent[0]["headers"])


async def test_a_page_gets_every_header_once_in_place_of_any_the_app_set() -> None:
    own = [(b"content-type", b"text/html"), (b"x-frame-options", b"SAMEORIGIN"), (b"cache-control", b"max-age=60")]
    headers = await headers_sent("/p/model", own)
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), "no header twice"
    found = dict(headers)
    assert found[b"content-type"] == b"text/html", "the app's other headers are kept"
    assert found[b"x-frame-options"] == b"DENY"
    assert found[b"cache-control"] == b"no-store"
    assert found[b"content-security-policy"] == CONTENT_SECURITY_POLICY.encode()
    assert found[b"referrer-policy"] == b"same-origin"
    assert found[b"x-content-type-options"] == b"nosniff"


async def test_a_static_file_keeps_its_own_caching_and_gets_the_rest() -> None:
    headers = dict(await headers_sent("/static/depot.css", [(b"cache-control", b"max-age=60")]))
    assert headers[b"cache-control"] == b"max-age=60"
    assert headers[b"x-frame-options"] == b"DENY"
    assert headers[b"content-security-policy"] == CONTENT_SECURITY_POLICY.encode()
