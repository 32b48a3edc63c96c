"""The three APIs, called over HTTP with the signed-in user's own token.

Every access rule stays where it is enforced: web_service only shows what the APIs answer to the
user. Their answers become the pages' errors here: `401` means the session is over (sign in
again), `403`, `404` and `503` are error pages, and a refused form (`400`, `409`, `429`) is told
back on the form. Every call forwards the request's `X-Request-ID` (`common.http`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import quote

import httpx
import structlog

from common.errors import Forbidden, NotFound, ServiceUnavailable
from common.http import service_client
from web_service.sessions import RefreshExchanges, Session
from web_service.settings import WebSettings

log = structlog.get_logger("depot.web.upstream")

Service = Literal["auth", "packages", "validate"]


class SignInRequired(Exception):
    """No session, or one the APIs no longer accept: the user signs in again."""


class Refused(Exception):
    """The API refused what a form asked (`400`, `409`, `429`): its reason goes back on the form."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []

    @property
    def message(self) -> str:
        """The reason, with the fields it names."""
        named = [f"{'.'.join(map(str, e.get('loc', [])[1:]))}: {e.get('msg', '')}" for e in self.errors]
        return "; ".join([self.detail, *named]) if named else self.detail


def segment(value: str) -> str:
    """`value` as one path segment of an API URL (a name, a version, a username)."""
    if not value or value.strip(".") == "" or len(value) > 256:
        raise NotFound("No such page.")
    return quote(value, safe="")


def problem_of(response: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    """The `detail` and `errors` of an API's problem document."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase, []
    if not isinstance(body, dict):
        return response.reason_phrase, []
    errors = body.get("errors")
    return str(body.get("detail") or response.reason_phrase), errors if isinstance(errors, list) else []


class Api:
    """The HTTP client of the three APIs, for the app's lifetime."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.exchanges = RefreshExchanges()
        self._http: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Api]:
        limits_timeout = self.settings.upstream_timeout_seconds
        async with service_client(timeout=limits_timeout) as client:
            self._http = client
            try:
                yield self
            finally:
                self._http = None

    async def send(
        self,
        method: str,
        service: Service,
        path: str,
        *,
        token: str | None = None,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        """One call; `503` when the API cannot be reached or fails."""
        if self._http is None:
            raise RuntimeError("the API client is not open")
        url = self.settings.upstream(service) + path
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = await self._http.request(method, url, params=params, json=body, headers=headers)
        except httpx.HTTPError as error:
            log.warning("api_unreachable", api=service, error_type=type(error).__name__)
            raise ServiceUnavailable(f"The {service} service cannot be reached. Try again in a moment.") from error
        if response.status_code >= 500:
            log.warning("api_failed", api=service, status=response.status_code)
            raise ServiceUnavailable(f"The {service} service is unavailable. Try again in a moment.")
        return response

    async def login(self, username: str, password: str) -> dict[str, Any]:
        """A token pair for a username and password (`Refused` when they are not accepted)."""
        response = await self.send("POST", "auth", "/auth/login", body={"username": username, "password": password})
        if response.status_code != httpx.codes.OK:
            detail, errors = problem_of(response)
            if response.status_code == httpx.codes.UNAUTHORIZED:
                detail, errors = "Wrong username or password, or the account is disabled.", []
            raise Refused(response.status_code, detail, errors)
        return dict(response.json())


class UserApi:
    """The APIs as the signed-in user of one session; renews its access token when it runs out."""

    def __init__(self, api: Api, session: Session) -> None:
        self.api = api
        self.session = session
        self.changed = False

    async def token(self) -> str:
        """The session's access token, renewed first when it is (nearly) expired."""
        session = self.session
        if not session.signed_in or session.refresh is None:
            raise SignInRequired
        if session.access_fresh and session.access is not None:
            return session.access
        refresh = session.refresh

        async def fetch() -> dict[str, Any] | None:
            response = await self.api.send("POST", "auth", "/auth/refresh", body={"refresh_token": refresh})
            return dict(response.json()) if response.status_code == httpx.codes.OK else None

        pair = await self.api.exchanges.exchange(refresh, fetch)
        if pair is None:
            raise SignInRequired
        session.hold(pair)
        self.changed = True
        return str(pair["access_token"])

    async def call(
        self, method: str, service: Service, path: str, *, params: dict[str, str] | None = None, body: Any = None
    ) -> httpx.Response:
        """A call as the user; `401` ends the session, `403`/`404` become error pages, `400`/`409`/`429` `Refused`."""
        response = await self.api.send(method, service, path, token=await self.token(), params=params, body=body)
        status = response.status_code
        if status < 400:
            return response
        detail, errors = problem_of(response)
        if status == httpx.codes.UNAUTHORIZED:
            raise SignInRequired
        if status == httpx.codes.FORBIDDEN and method == "GET":
            raise Forbidden(detail)
        if status == httpx.codes.NOT_FOUND and method == "GET":
            raise NotFound(detail)
        raise Refused(status, detail, errors)

    async def get(self, service: Service, path: str, params: dict[str, str] | None = None) -> Any:
        """The JSON of a `GET`."""
        return (await self.call("GET", service, path, params=params)).json()

    async def find(self, service: Service, path: str) -> Any | None:
        """The JSON of a `GET`, or None where the API answers `404`."""
        try:
            return await self.get(service, path)
        except NotFound:
            return None
