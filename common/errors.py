"""One exception hierarchy for every service, rendered as RFC 9457 problem documents.

Domain code raises these; one handler (see `common.middleware`) turns them into responses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

import asyncpg
from botocore.exceptions import ClientError as BotoClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException
from starlette.responses import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"


class DepotError(Exception):
    """Base of every error a service answers with. `status` picks the HTTP status.

    The request's transaction rolls back when one is raised: what must stand although the
    request fails is made durable first (`common.db.checkpoint`).
    """

    status: ClassVar[int] = 500

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail = detail or HTTPStatus(self.status).phrase
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None
        self.extensions = dict(extensions or {})
        super().__init__(self.detail)


class BadRequest(DepotError):
    status = 400


class ValidationFailed(BadRequest):
    """Input that does not match the request model; `errors` says where."""

    def __init__(self, errors: Sequence[Mapping[str, Any]], detail: str = "The request is invalid.") -> None:
        super().__init__(detail, errors=errors)


class Unauthorized(DepotError):
    status = 401

    def __init__(self, detail: str = "Authentication is required.") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(DepotError):
    status = 403


class NotFound(DepotError):
    status = 404


class Conflict(DepotError):
    status = 409


class PayloadTooLarge(DepotError):
    status = 413


class UnsupportedMediaType(DepotError):
    status = 415


class RangeNotSatisfiable(DepotError):
    status = 416

    def __init__(self, size: int, detail: str = "The requested range is not satisfiable.") -> None:
        super().__init__(detail, headers={"Content-Range": f"bytes */{size}"})


class TooManyRequests(DepotError):
    status = 429

    def __init__(self, retry_after: int, detail: str = "Too many requests.") -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class ServiceUnavailable(DepotError):
    status = 503

    def __init__(
        self,
        detail: str = "A dependency is unavailable.",
        retry_after: int = 5,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))}, extensions=extensions)


def problem_body(
    status: int,
    detail: str,
    request_id: str | None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The problem document for `status`, as a dict ready for JSON (extension members last)."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
    if errors is not None:
        body["errors"] = list(errors)
    for name, value in (extensions or {}).items():
        body.setdefault(name, value)
    return body


def problem_response(
    status: int,
    detail: str,
    request_id: str | None,
    *,
    headers: Mapping[str, str] | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> Response:
    """A complete `application/problem+json` response."""
    content = json.dumps(problem_body(status, detail, request_id, errors, extensions), separators=(",", ":"))
    return Response(content, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_CONTENT_TYPE)


def error_response(error: DepotError, request_id: str | None) -> Response:
    """Render a raised `DepotError`."""
    return problem_response(
        error.status, error.detail, request_id, headers=error.headers, errors=error.errors, extensions=error.extensions
    )


_S3_TRANSIENT = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})


def _is_unavailable(error: BaseException) -> bool:
    """Whether `error` means a dependency (database, S3) is out of reach rather than a bug."""
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        error = error.orig if error.orig is not None else error
        error = error.__cause__ or error
    unavailable = (
        OSError,
        TimeoutError,
        sa_exc.TimeoutError,
        sa_exc.InterfaceError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.TooManyConnectionsError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.InterfaceError,
        BotoConnectionError,
        EndpointConnectionError,
        ConnectTimeoutError,
    )
    if isinstance(error, BotoClientError):
        # S3 asking to slow down or failing on its side is an outage, not a bug of ours.
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or error.response.get("Error", {}).get("Code") in _S3_TRANSIENT
    return isinstance(error, unavailable)


# Text PostgreSQL cannot store (a NUL character, an unencodable byte): the client's input is at fault.
_UNSTORABLE_TEXT = frozenset({"22021", "22P05"})


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE code of an asyncpg error, or behind a SQLAlchemy database error, if there is one."""
    orig = getattr(error, "orig", None)
    for candidate in (error, orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def exception_response(error: BaseException, request_id: str | None) -> Response:
    """The one place where any exception becomes a problem document.

    `DepotError`s say what they are; routing errors keep their status; a dependency that is out
    of reach is a `503`; anything else is a bug, answered by a `500` that reveals nothing.
    """
    if isinstance(error, DepotError):
        return error_response(error, request_id)
    if isinstance(error, HTTPException):
        detail = {404: "No resource at this path.", 405: "Method not allowed on this path."}.get(
            error.status_code, HTTPStatus(error.status_code).phrase
        )
        return problem_response(error.status_code, detail, request_id, headers=error.headers)
    if isinstance(error, sa_exc.DBAPIError | asyncpg.PostgresError) and sqlstate(error) in _UNSTORABLE_TEXT:
        return problem_response(400, "The input contains characters that cannot be stored (such as NUL).", request_id)
    if _is_unavailable(error):
        return error_response(ServiceUnavailable("A dependency is unavailable; try again shortly."), request_id)
    return problem_response(500, "An unexpected error occurred; quote the request id when reporting it.", request_id)
