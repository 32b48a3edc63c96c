"""The browser's session: a cookie that holds the user's own tokens, sealed, and its CSRF token.

web_service keeps no data, so the session lives in the cookie itself rather than in a store that
every task would have to share. The cookie is sealed with Fernet (AES-128-CBC and HMAC-SHA256,
from `cryptography`, which PyJWT's crypto extra already brings): signed, so that nobody can forge
or alter one, and encrypted, so that the refresh token inside is not readable from a copied cookie
header, a proxy's log or a browser extension that sees cookies. It is `HttpOnly`,
`SameSite=Lax`, `Secure` (and named with the `__Host-` prefix) when the public URL is https, and
expires with the refresh token. Signing out revokes the refresh token at auth_service, so a copy
of an old cookie is worth at most the rest of its access token's 15 minutes.

Refresh tokens are single-use and a re-used one revokes the whole login (API.md section 2), yet
a browser sends requests in parallel (search as you type) with the same cookie: the exchange of
one refresh token is done once per process, and its result is handed to every request that
brings the same token for a minute.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from cryptography.fernet import Fernet, InvalidToken
from starlette.responses import Response

log = structlog.get_logger("depot.web.sessions")

ANONYMOUS_SECONDS = 12 * 3600
"""Lifetime of a session that only holds a CSRF token (the sign-in form's)."""
REFRESH_MARGIN_SECONDS = 30.0
"""An access token this close to its expiry is renewed before it is used."""
EXCHANGE_MEMORY_SECONDS = 60.0
OPENED_COOKIES = 1024
"""Distinct cookies whose content is remembered (about 2 MB at most)."""


@dataclass
class Session:
    """What the cookie holds. Times are seconds since the epoch."""

    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    username: str | None = None
    admin: bool = False
    access: str | None = None
    access_expires: float = 0.0
    refresh: str | None = None
    refresh_expires: float = 0.0

    @property
    def signed_in(self) -> bool:
        return self.refresh is not None and self.refresh_expires > time.time()

    def sign_in(self, username: str, admin: bool, pair: dict[str, Any]) -> None:
        """Hold a new token pair (a new CSRF token too: one seen before signing in is not trusted after)."""
        self.username = username
        self.admin = admin
        self.csrf = secrets.token_urlsafe(32)
        self.hold(pair)

    def hold(self, pair: dict[str, Any]) -> None:
        """Keep the token pair that /auth/login or /auth/refresh answered."""
        now = time.time()
        self.access = str(pair["access_token"])
        self.access_expires = now + float(pair["expires_in"])
        self.refresh = str(pair["refresh_token"])
        self.refresh_expires = now + float(pair["refresh_expires_in"])

    def sign_out(self) -> None:
        self.username, self.admin, self.access, self.refresh = None, False, None, None
        self.access_expires = self.refresh_expires = 0.0
        self.csrf = secrets.token_urlsafe(32)

    @property
    def access_fresh(self) -> bool:
        return self.access is not None and self.access_expires - REFRESH_MARGIN_SECONDS > time.time()


class SessionCookies:
    """Seal sessions into cookies and open them again."""

    def __init__(self, key: str, *, secure: bool) -> None:
        # Fernet wants 32 bytes; the setting is text of any length: derive them, for this use only.
        digest = hashlib.sha256(b"depot web session v1\x00" + key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self.secure = secure
        self.name = "__Host-depot_session" if secure else "depot_session"
        # A browser sends the same cookie with every page until the session changes: each distinct
        # cookie is opened (its signature checked, its content decrypted) once, not on every request.
        # Only cookies that opened are remembered; what they hold is copied into a new Session each time.
        self._opened = functools.lru_cache(maxsize=OPENED_COOKIES)(self._unseal)

    def open(self, value: str | None) -> tuple[Session, bool]:
        """The session a cookie holds, and whether it was one; a new anonymous one for anything else."""
        if value:
            try:
                session = Session(**self._opened(value))
            except (InvalidToken, ValueError, TypeError, UnicodeEncodeError):
                log.info("session_cookie_refused")
            else:
                if session.refresh is None or session.signed_in:
                    return session, True
        return Session(), False

    def _unseal(self, value: str) -> dict[str, Any]:
        fields = json.loads(self._fernet.decrypt(value.encode("ascii")))
        if not isinstance(fields, dict):
            raise TypeError("a session cookie holds an object")
        return fields

    def seal(self, session: Session) -> str:
        return self._fernet.encrypt(json.dumps(asdict(session), separators=(",", ":")).encode()).decode("ascii")

    def store(self, response: Response, session: Session) -> None:
        """Set the cookie on `response`; it lives as long as the refresh token inside it."""
        max_age = max(1, int(session.refresh_expires - time.time())) if session.signed_in else ANONYMOUS_SECONDS
        response.set_cookie(
            self.name, self.seal(session), max_age=max_age, path="/",
            secure=self.secure, httponly=True, samesite="lax",
        )  # fmt: skip


class RefreshExchanges:
    """One exchange per refresh token per process; its answer shared with the requests that race it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._done: dict[str, tuple[float, dict[str, Any]]] = {}

    async def exchange(self, refresh_token: str, fetch: Any) -> dict[str, Any] | None:
        """`await fetch()` (a new pair, or None when refused), done once for `refresh_token`."""
        key = hashlib.sha256(refresh_token.encode()).hexdigest()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            self._done = {k: v for k, v in self._done.items() if v[0] > now}
            if key in self._done:
                return self._done[key][1]
            pair: dict[str, Any] | None = await fetch()
            if pair is not None:
                self._done[key] = (now + EXCHANGE_MEMORY_SECONDS, pair)
        self._locks.pop(key, None)
        return pair
