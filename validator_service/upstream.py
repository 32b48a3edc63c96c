"""Calls to the other services as the `service` account, and a short-lived cache of their answers.

Calls carry an access token of the `service` account, obtained by exchanging its API token
(`DEPOT_SERVICE_TOKEN`) at auth_service's `/auth/token` and reused until shortly before it
expires; a call answered `401` (the token was revoked, or the keys rotated) is made once more
with a new token. A service that cannot be reached is a `ServiceUnavailable` (`503`): a
dependency failed, not this service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import httpx
import structlog

from common.errors import ServiceUnavailable
from common.http import service_client
from validator_service.settings import ValidatorSettings

log = structlog.get_logger(__name__)

_TOKEN_MARGIN = 30.0  # seconds before its expiry that an access token is renewed

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ServiceAccount:
    """An HTTP client that calls other services with the `service` account's access token."""

    def __init__(self, settings: ValidatorSettings) -> None:
        self._settings = settings
        self._http: httpx.AsyncClient | None = None
        self._token: tuple[float, str] | None = None
        self._token_lock = asyncio.Lock()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[ServiceAccount]:
        """Keep an HTTP client (and its connections) for the block: the app's lifetime."""
        async with service_client(timeout=5.0) as client:
            self._http = client
            try:
                yield self
            finally:
                self._http = None

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("the service account's client is not open")
        return self._http

    async def get(self, url: str, *, params: dict[str, str] | None = None, service: str) -> httpx.Response:
        """`GET url` with the service token (renewed once on a `401`); `503` if `service` is unreachable."""
        response = await self._get(url, params or {}, await self._access_token(), service)
        if response.status_code == httpx.codes.UNAUTHORIZED:
            response = await self._get(url, params or {}, await self._access_token(renew=True), service)
        return response

    async def _get(self, url: str, params: dict[str, str], token: str, service: str) -> httpx.Response:
        try:
            return await self._client.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as error:
            log.warning(f"{service}_unreachable", error_type=type(error).__name__)
            raise ServiceUnavailable(f"{service} is unreachable.") from error

    async def _access_token(self, *, renew: bool = False) -> str:
        async with self._token_lock:
            if not renew and self._token is not None and self._token[0] > time.monotonic():
                return self._token[1]
            self._token = await self._exchange()
            return self._token[1]

    async def _exchange(self) -> tuple[float, str]:
        settings = self._settings
        api_token = _service_token(settings)
        if settings.auth_url is None or api_token is None:
            raise ServiceUnavailable("The service account is not configured (DEPOT_AUTH_URL, DEPOT_SERVICE_TOKEN).")
        body = {"grant_type": "api_token", "api_token": api_token}
        try:
            response = await self._client.post(f"{settings.auth_url.rstrip('/')}/auth/token", json=body)
        except httpx.HTTPError as error:
            log.warning("auth_service_unreachable", error_type=type(error).__name__)
            raise ServiceUnavailable("auth_service is unreachable.") from error
        if response.status_code != httpx.codes.OK:
            log.error("service_token_refused", status=response.status_code)
            raise ServiceUnavailable("The service account's token was refused.")
        granted = response.json()
        lifetime = max(float(granted["expires_in"]) - _TOKEN_MARGIN, 1.0)
        return time.monotonic() + lifetime, str(granted["access_token"])


class ShortCache(Generic[K, V]):
    """Answers kept for `seconds` at most (none when 0), so that a change elsewhere shows here within that time."""

    _MAX_ENTRIES = 10_000

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._entries: dict[K, tuple[float, V]] = {}

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        """The cached answer for `key`, or `fetch()`'s, kept. A failed fetch is not kept."""
        cached = self._entries.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        found = await fetch()
        if self._seconds > 0:
            if len(self._entries) >= self._MAX_ENTRIES:
                self._entries.clear()  # simple and bounded; entries live seconds anyway
            self._entries[key] = (time.monotonic() + self._seconds, found)
        return found


def _service_token(settings: ValidatorSettings) -> str | None:
    if settings.service_token is not None:
        return settings.service_token.get_secret_value()
    if settings.service_token_file is None:
        return None
    try:
        return settings.service_token_file.read_text().strip() or None
    except OSError as error:
        log.error("service_token_file_unreadable", error_type=type(error).__name__)  # noqa: TRY400 - the path is in the settings; no trace needed
        return None
