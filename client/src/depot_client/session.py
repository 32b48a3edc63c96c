"""HTTP to one Depot registry: bearer tokens that are renewed before they expire, errors turned into
`DepotError`s, and retries where they are safe (see `retry`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from depot_client import __version__
from depot_client.credentials import Credentials, CredentialStore
from depot_client.errors import AuthenticationError, DepotError, error_for_status
from depot_client.retry import SAFE_METHODS, RetryPolicy, parse_retry_after

# An access token is renewed when less than this is left of it, so that no call carries a token
# that expires on the way (a long upload's request is authenticated when it starts).
RENEW_MARGIN_SECONDS = 120.0
TIMEOUT = httpx.Timeout(60.0, connect=10.0)

Body = bytes | Callable[[], Iterable[bytes]] | None


def segment(value: str) -> str:
    """`value` as one path segment (a version's `+build` or a stray `/` stay inside it)."""
    return quote(value, safe="")


def user_agent() -> str:
    return f"depot-client/{__version__} httpx/{httpx.__version__}"


def new_http_client(base_url: str = "", *, max_connections: int = 10) -> httpx.Client:
    """An httpx client with the environment's proxies (`HTTPS_PROXY`, `NO_PROXY`) and CA settings."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.Client(
        base_url=base_url,
        timeout=TIMEOUT,
        limits=limits,
        trust_env=True,
        follow_redirects=False,
        headers={"User-Agent": user_agent()},
    )


def problem_message(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """A one-line message from an error answer's problem document (or its status)."""
    problem: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        parsed = response.json()
        if isinstance(parsed, dict):
            problem = parsed
    message = str(problem.get("detail") or problem.get("title") or response.reason_phrase or "error")
    errors = problem.get("errors")
    if isinstance(errors, list) and errors:
        details = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg', '')}"
            for item in errors
            if isinstance(item, dict)
        )
        message = f"{message} ({details})"
    return f"{response.status_code} {message}", problem


class Session:
    """Calls to one registry as one caller.

    `store` is where renewed tokens are saved (None for credentials from the environment, which
    live only as long as the process).
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        store: CredentialStore | None = None,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.credentials = credentials
        self.store = store
        self.retry = retry or RetryPolicy()
        self.http = http or new_http_client(credentials.url)
        self._sleep = sleep

    @property
    def url(self) -> str:
        return self.credentials.url

    def close(self) -> None:
        self.http.close()

    # Tokens

    def access_token(self) -> str:
        """A valid access token, renewed first if it expires soon."""
        current = self.credentials
        if current.access_token and (self._fresh(current) or not self._can_renew(current)):
            return current.access_token
        return self.renew(stale=current.access_token)

    def renew(self, stale: str | None = None) -> str:
        """A new access token (from the API token or the refresh token), saved for the next command.

        Under the store's lock, the file is read again first: another command may have renewed
        the token (and spent the refresh token) meanwhile, and its token is then used.
        """
        lock = self.store.lock() if self.store is not None else contextlib.nullcontext()
        with lock:
            if self.store is not None:
                stored = self.store.load()
                if stored is not None and stored.url == self.credentials.url:
                    self.credentials = stored
            current = self.credentials
            if current.access_token and current.access_token != stale and self._fresh(current):
                return current.access_token
            if current.api_token:
                body = {"grant_type": "api_token", "api_token": current.api_token}
                answer = self._token_call("/auth/token", body)
            elif current.refresh_token:
                answer = self._token_call("/auth/refresh", {"refresh_token": current.refresh_token})
                current.refresh_token = str(answer["refresh_token"])
            else:
                raise AuthenticationError("Not logged in, or the login has expired: run `depot login`.")
            current.access_token = str(answer["access_token"])
            current.access_expires_at = time.time() + float(answer.get("expires_in", 900))
            if self.store is not None:
                self.store.save(current)
            return current.access_token

    def _token_call(self, path: str, body: dict[str, str]) -> dict[str, Any]:
        response = self.request("POST", path, json=body, authenticated=False)
        answer = response.json()
        if not isinstance(answer, dict) or "access_token" not in answer:
            raise DepotError(f"{path} answered without an access token")
        return answer

    @staticmethod
    def _fresh(credentials: Credentials) -> bool:
        expires = credentials.access_expires_at
        return expires is not None and expires - RENEW_MARGIN_SECONDS > time.time()

    @staticmethod
    def _can_renew(credentials: Credentials) -> bool:
        return bool(credentials.api_token or credentials.refresh_token)

    # Calls

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        allow: Iterable[int] = (),
    ) -> httpx.Response:
        """Make a call; its answer if the status is below 400 (or in `allow`), else the matching `DepotError`.

        `body` is bytes or a function giving the body's chunks (called again for a retry).
        After a `401`, the token is renewed and the call made once more: the server checks the
        caller before it reads anything, so nothing was done.
        """
        safe = method in SAFE_METHODS
        allowed = set(allow)
        token = self.access_token() if authenticated else None
        renewed = False
        attempt = 0
        while True:
            attempt += 1
            sent_headers = dict(headers or {})
            if token is not None:
                sent_headers["Authorization"] = f"Bearer {token}"
            content = body() if callable(body) else body
            try:
                response = self.http.request(
                    method, path, json=json, params=params, content=content, headers=sent_headers
                )
            except httpx.TransportError as error:
                if attempt < self.retry.attempts and self.retry.should_retry_error(error, safe=safe):
                    self._sleep(self.retry.delay(attempt))
                    continue
                raise DepotError(f"Could not reach {self.url}: {error.__class__.__name__}: {error}") from error
            status = response.status_code
            if status == 401 and token is not None and not renewed and self._can_renew(self.credentials):
                renewed = True
                token = self.renew(stale=token)
                continue
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if (
                status not in allowed
                and attempt < self.retry.attempts
                and self.retry.should_retry_status(status, safe=safe, retry_after=retry_after)
            ):
                self._sleep(self.retry.delay(attempt, retry_after))
                continue
            if status < 400 or status in allowed:
                return response
            message, problem = problem_message(response)
            if status == 401 and not authenticated:
                raise AuthenticationError(message, status=status, problem=problem)
            raise error_for_status(status, message, problem)

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params).json()

    def paginate(self, path: str, params: Mapping[str, Any] | None = None, limit: int | None = None) -> list[Any]:
        """Every item of a list (`items`/`next_cursor`), or the first `limit` of them."""
        items: list[Any] = []
        query = {k: v for k, v in (params or {}).items() if v is not None}
        cursor: str | None = None
        while True:
            page_size = 100 if limit is None else max(1, min(100, limit - len(items)))
            page = self.get_json(path, {**query, "limit": page_size, **({"cursor": cursor} if cursor else {})})
            items.extend(page.get("items", []))
            cursor = page.get("next_cursor")
            if not cursor or (limit is not None and len(items) >= limit):
                return items if limit is None else items[:limit]
