"""What the validator asks package_service: a package's access list, and whether a version exists.

The answer is `common.contracts.AccessFacts`, read with the model package_service answers with.
One that breaks that contract is logged (its fields, never its values) and answered `503`, as
when package_service does not answer at all: a dependency failed, not this service (a `500`).

Calls carry an access token of the `service` account, obtained by exchanging its API token
(`DEPOT_SERVICE_TOKEN`) at auth_service's `/auth/token` and reused until shortly before it
expires. Answers are cached for `access_cache_seconds` at most (a few seconds), so that a change
of visibility or groups in package_service shows here within that time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import httpx
import structlog

from common.contracts import AccessFacts, InvalidMessage, parse_access_facts
from common.errors import BadRequest, ServiceUnavailable
from common.http import service_client
from common.naming import normalize_name, validate_name
from validator_service.settings import ValidatorSettings

log = structlog.get_logger(__name__)

_CACHE_ENTRIES = 10_000
_TOKEN_MARGIN = 30.0  # seconds before its expiry that an access token is renewed


class PackageDirectory:
    """Reads access facts from package_service, with a short-lived cache."""

    def __init__(self, settings: ValidatorSettings) -> None:
        self._settings = settings
        self._http: httpx.AsyncClient | None = None
        self._cache: dict[tuple[str, str | None], tuple[float, AccessFacts | None]] = {}
        self._token: tuple[float, str] | None = None
        self._token_lock = asyncio.Lock()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[PackageDirectory]:
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
            raise RuntimeError("the package directory is not open")
        return self._http

    async def facts(self, name: str, version: str | None) -> AccessFacts | None:
        """The facts of package `name` (any spelling), or None if there is no such package."""
        try:
            validate_name(name)
        except BadRequest:
            return None  # no package can have this name
        key = (normalize_name(name), version)
        ttl = self._settings.access_cache_seconds
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        found = await self._fetch(name, version)
        if ttl > 0:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()  # simple and bounded; entries live seconds anyway
            self._cache[key] = (time.monotonic() + ttl, found)
        return found

    async def _fetch(self, name: str, version: str | None) -> AccessFacts | None:
        if self._settings.packages_url is None:
            raise ServiceUnavailable("package_service is not configured (DEPOT_PACKAGES_URL).")
        url = f"{self._settings.packages_url.rstrip('/')}/packages/{quote(name, safe='')}/access"
        params = {"version": version} if version is not None else {}
        response = await self._get(url, params, await self._access_token())
        if response.status_code == httpx.codes.UNAUTHORIZED:  # the token was revoked or keys rotated: once more
            response = await self._get(url, params, await self._access_token(renew=True))
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        if response.status_code != httpx.codes.OK:
            log.warning("package_service_refused", status=response.status_code)
            raise ServiceUnavailable("package_service did not answer the access query.")
        try:
            return parse_access_facts(response.content)
        except InvalidMessage as error:
            log.error("package_service_answer_invalid", problems=error.problems[:10])  # noqa: TRY400 - no trace needed
            raise ServiceUnavailable("package_service's answer to the access query was malformed.") from None

    async def _get(self, url: str, params: dict[str, str], token: str) -> httpx.Response:
        try:
            return await self._client.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as error:
            log.warning("package_service_unreachable", error_type=type(error).__name__)
            raise ServiceUnavailable("package_service is unreachable.") from error

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
