"""Headers that every page carries, and the CSRF check of every form that changes something."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import Forbidden

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ]
)
"""No inline script or style anywhere (htmx's own indicator styles are turned off in base.html)."""

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
PAGE_HEADERS = {**HEADERS, "Cache-Control": "no-store"}
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"


def _encoded(headers: dict[str, str]) -> tuple[list[tuple[bytes, bytes]], frozenset[bytes]]:
    """`headers` as ASGI gives them (lowercase names, bytes), and their names."""
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    return encoded, frozenset(name for name, _ in encoded)


_STATIC_FILE_HEADERS, _PAGE_HEADERS = _encoded(HEADERS), _encoded(PAGE_HEADERS)


class SecurityHeaders:
    """Adds `HEADERS` to every answer, in place of any the app set; pages (not static files) are never
    stored by caches. The headers are encoded once: a page's answer only gets them appended."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added, names = _STATIC_FILE_HEADERS if str(scope.get("path", "")).startswith("/static/") else _PAGE_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [header for header in message.get("headers", ()) if header[0].lower() not in names]
                message["headers"] = [*kept, *added]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def check_csrf(expected: str, sent: str | None) -> None:
    """A form's (or htmx request's) token must be the session's: a page of another site cannot know it."""
    if not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise Forbidden("The form has expired or did not come from this site. Reload the page and try again.")
