"""The three APIs, called over HTTP with the signed-in user's own token.

Every access rule stays where it is enforced: web_service only shows what the APIs answer to the
user. Their answers become the pages' errors here: `401` means the session is over (sign in
again), `403`, `404` and `503` are error pages, and a refused form (`400`, `409`, `429`) is told
back on the form. Every call forwards the request's `X-Request-ID`.

Every page makes one to three such calls (the package page one: `include=package` brings the
package with its versions), so their cost is the page's: they go through aiohttp,
whose C parser and connection pool spend about a tenth of the CPU per call that httpx does at
fifty calls in flight (measured here, 0.1 ms against 2 ms; `bench/web_bench.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal, NoReturn
from urllib.parse import quote

import aiohttp
import pydantic_core
import structlog
from yarl import URL

from common.errors import Forbidden, NotFound, ServiceUnavailable
from common.requestid import REQUEST_ID_HEADER, current_request_id
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


@dataclass(frozen=True)
class Answer:
    """An API's answer, read whole (they are small JSON documents)."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        # pydantic's parser (Rust), a third faster than `json.loads` on a page of versions; a ValueError too.
        return pydantic_core.from_json(self.content)

    @property
    def reason_phrase(self) -> str:
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return str(self.status_code)


def problem_of(response: Answer) -> tuple[str, list[dict[str, Any]]]:
    """The `detail` and `errors` of an API's problem document."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase, []
    if not isinstance(body, dict):
        return response.reason_phrase, []
    errors = body.get("errors")
    return str(body.get("detail") or response.reason_phrase), errors if isinstance(errors, list) else []


MAX_CONNECTIONS = 100
# Idle connections are let go well before a service's keep-alive ends (uvicorn's default: 5 s), so
# that a call is not sent on a connection the other side is closing.
KEEPALIVE_SECONDS = 4.0
# A call that met a connection the API had just closed is made once more if it is a read: nothing
# was done. Anything else is told to the user as a 503, never repeated blindly.
SAFE_METHODS = frozenset({"GET", "HEAD"})


class Api:
    """The HTTP client of the three APIs, for the app's lifetime."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.exchanges = RefreshExchanges()
        self._http: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Api]:
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_SECONDS)
        timeout = aiohttp.ClientTimeout(total=self.settings.upstream_timeout_seconds)
        # One client serves every user: it keeps no cookie an API might set, so none reaches another user.
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
        ) as client:
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
    ) -> Answer:
        """One call; `503` when the API cannot be reached or fails."""
        if self._http is None:
            raise RuntimeError("the API client is not open")
        # Path segments are quoted here already (`segment`): taken as they are, never quoted again.
        url = URL(self.settings.upstream(service) + path, encoded=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request_id = current_request_id.get()
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        for attempt in (1, 2):
            try:
                async with self._http.request(
                    method, url, params=params, json=body, headers=headers, allow_redirects=False
                ) as answer:
                    response = Answer(answer.status, answer.headers, await answer.read())
                break
            except aiohttp.ServerDisconnectedError as error:
                if attempt == 1 and method in SAFE_METHODS:
                    continue
                self._unreachable(service, error)
            except (TimeoutError, aiohttp.ClientError) as error:
                self._unreachable(service, error)
        if response.status_code >= 500:
            log.warning("api_failed", api=service, status=response.status_code)
            raise ServiceUnavailable(f"The {service} service is unavailable. Try again in a moment.")
        return response

    @staticmethod
    def _unreachable(service: Service, error: Exception) -> NoReturn:
        log.warning("api_unreachable", api=service, error_type=type(error).__name__)
        raise ServiceUnavailable(f"The {service} service cannot be reached. Try again in a moment.") from error

    async def login(self, username: str, password: str) -> dict[str, Any]:
        """A token pair for a username and password (`Refused` when they are not accepted)."""
        response = await self.send("POST", "auth", "/auth/login", body={"username": username, "password": password})
        if response.status_code != HTTPStatus.OK:
            detail, errors = problem_of(response)
            if response.status_code == HTTPStatus.UNAUTHORIZED:
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
            return dict(response.json()) if response.status_code == HTTPStatus.OK else None

        pair = await self.api.exchanges.exchange(refresh, fetch)
        if pair is None:
            raise SignInRequired
        session.hold(pair)
        self.changed = True
        return str(pair["access_token"])

    async def call(
        self, method: str, service: Service, path: str, *, params: dict[str, str] | None = None, body: Any = None
    ) -> Answer:
        """A call as the user; `401` ends the session, `403`/`404` become error pages, `400`/`409`/`429` `Refused`."""
        response = await self.api.send(method, service, path, token=await self.token(), params=params, body=body)
        status = response.status_code
        if status < 400:
            return response
        detail, errors = problem_of(response)
        if status == HTTPStatus.UNAUTHORIZED:
            raise SignInRequired
        if status == HTTPStatus.FORBIDDEN and method == "GET":
            raise Forbidden(detail)
        if status == HTTPStatus.NOT_FOUND and method == "GET":
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
