"""How a request to a declared operation is served, in this order, the same in every service:

1. the caller, from its bearer token, checked against the operation's `auth` (before any byte of
   the body is read: an anonymous call is a `401` whatever it sends);
2. the query and the JSON body, validated by their models (`400` with the fields at fault);
3. the handler, in the request's transaction (`common.db`), which commits when it returns, or, for
   an operation declared `read_only`, in none (`common.reads`); all within `request_timeout_seconds`
   unless it moves artifact bytes (`Operation.transfer`): a dependency that hangs makes a `503`
   with `Retry-After`, not a request that waits for minutes;
4. what the handler left for after the commit (`Call.on_commit`);
5. the result: a model as JSON, `None` as `204`, or the handler's own response.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, NamedTuple

import structlog
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from common.api import Auth, Call, Operation
from common.auth import Principal, bearer_token, require_admin, require_service_or_admin
from common.db import transaction
from common.errors import (
    BadRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from common.logging import error_fields
from common.middleware import mark_transfer
from common.resources import Resources

log = structlog.get_logger("depot.endpoints")

MAX_JSON_BODY_BYTES = 1024 * 1024


def resources_of(request: Request) -> Resources:
    """The running service's resources (the pipeline hands them to handlers as `call.resources`)."""
    found: Resources = request.app.state.resources
    return found


class Caller(NamedTuple):
    """Who calls, and what the service's own `confirm_caller` found about them (None without one)."""

    principal: Principal | None
    confirmed: object = None


async def authenticate(request: Request, resources: Resources, auth: Auth) -> Caller:
    """The caller of an operation declared with `auth`: `401` without a valid token or when the
    service's own `confirm_caller` refuses it, `403` without the role it needs. From here on the
    request's log lines carry the username."""
    if auth == "none":
        return Caller(None)
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Unauthorized()
    if resources.verifier is None:
        raise ServiceUnavailable("Token verification is not configured.")
    principal = await resources.verifier.verify(token)
    request.scope.setdefault("state", {})["username"] = principal.username
    structlog.contextvars.bind_contextvars(user=principal.username)
    confirmed = None
    if resources.confirm_caller is not None:
        # Outside any transaction: no connection is held while the body arrives.
        confirmed = await resources.confirm_caller(resources.reads, principal)
    if auth == "admin":
        require_admin(principal)
    elif auth == "service_or_admin":
        require_service_or_admin(principal)
    return Caller(principal, confirmed)


def endpoint(operation: Operation) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint that serves `operation`."""

    async def serve(request: Request) -> Response:
        resources = resources_of(request)
        deadline = None if operation.transfer else resources.settings.request_timeout_seconds
        if operation.transfer:
            mark_transfer(request.scope)
        try:
            async with asyncio.timeout(deadline):
                principal, confirmed = await authenticate(request, resources, operation.auth)
                query = read_query(request, operation.query) if operation.query is not None else None
                body = await read_json_body(request, operation.body) if operation.body is not None else None
                if operation.read_only:
                    call = Call(
                        request,
                        body,
                        query,
                        session=None,
                        resources=resources,
                        principal=principal,
                        confirmed=confirmed,
                    )
                    result = await operation.handler(call)
                else:
                    async with transaction(resources.sessions) as session:
                        call = Call(
                            request, body, query, session=session, resources=resources, principal=principal,
                            confirmed=confirmed,
                        )  # fmt: skip
                        result = await operation.handler(call)
        except TimeoutError:
            log.warning("request_deadline_exceeded", seconds=deadline)
            raise ServiceUnavailable("The request could not finish in time: a dependency is slow. Try again.") from None
        for action in call.after_commit:
            try:
                await action()
            except Exception as error:  # noqa: BLE001 - the request succeeded; what failed here is swept later
                log.warning("after_commit_failed", **error_fields(error))
        response = render_result(result, operation.status_code)
        if isinstance(response, StreamingResponse):
            mark_transfer(request.scope)  # a relayed download: its time is the client's, not the service's
        return response

    serve.__name__ = operation.operation_id
    return serve


def _error_items(error: ValidationError, where: str) -> list[dict[str, object]]:
    # pydantic's own messages, without the offending input (it may be a password).
    return [{"loc": [where, *item["loc"]], "msg": item["msg"]} for item in error.errors(include_input=False)]


async def read_json_body(request: Request, model: type[BaseModel]) -> BaseModel:
    """Read and validate a JSON body, bounded in size; every failure is a problem document."""
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("The body must be JSON (Content-Type: application/json).")
    chunks = bytearray()
    try:
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > MAX_JSON_BODY_BYTES:
                raise PayloadTooLarge(f"A JSON body may not exceed {MAX_JSON_BODY_BYTES} bytes.")
    except ClientDisconnect:
        raise BadRequest("The client disconnected before sending the whole body.") from None
    data = parse_json(bytes(chunks)) if chunks else None
    if not isinstance(data, dict):
        raise ValidationFailed([{"loc": ["body"], "msg": "Input should be a JSON object"}])
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ValidationFailed(_error_items(error, "body")) from None


def parse_json(raw: bytes) -> Any:
    """Strict JSON (RFC 8259) that the database can store: `400` for anything else.

    Refused: invalid JSON, `NaN` and `Infinity` (not JSON) and numbers too large for a float
    (`1e400`), nesting that exhausts the parser, and strings with lone surrogates (`"\\ud800"`,
    which no UTF-8 text can hold).
    """
    try:
        data = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise BadRequest("The body is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The body is not valid JSON.") from None
    pending = [data]
    while pending:  # every string, keys included, must be UTF-8 text
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str) and not _is_utf8_text(value):
            raise BadRequest("The body holds a string that is not valid Unicode (a lone surrogate).")
    return data


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _is_utf8_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_query(request: Request, model: type[BaseModel]) -> BaseModel:
    """Validate the query string against its model."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as error:
        raise ValidationFailed(_error_items(error, "query")) from None


def render_result(result: BaseModel | Response | None, status_code: int) -> Response:
    """A handler's return value as a response: models become JSON, `None` becomes `204`."""
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(status_code=int(HTTPStatus.NO_CONTENT))
    # Straight to JSON text by pydantic's serializer, without building Python dicts for `json.dumps`.
    return Response(result.model_dump_json(), status_code=status_code, media_type="application/json")
