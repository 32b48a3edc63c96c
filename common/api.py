"""Declared operations: request models that validate bodies, and the OpenAPI 3.1 document built from them.

A service lists `Operation`s; each names its body, query and response models. The same models
validate requests (unknown body fields are a `400`) and describe the API at `/<prefix>/openapi.json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.json_schema import models_json_schema
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from common.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

MAX_JSON_BODY_BYTES = 1024 * 1024


class RequestModel(BaseModel):
    """Base of request bodies: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class QueryModel(BaseModel):
    """Base of query-string models."""

    model_config = ConfigDict(extra="ignore")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem document, as every error is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    request_id: str | None
    errors: list[FieldError] | None = None


BodyT = TypeVar("BodyT")
QueryT = TypeVar("QueryT")


class Call(Generic[BodyT, QueryT]):
    """What a handler receives: the request, its validated body and query, and its database session."""

    def __init__(self, request: Request, body: BodyT, query: QueryT, session: AsyncSession | None) -> None:
        self.request = request
        self.body = body
        self.query = query
        self._session = session
        self.after_commit: list[Callable[[], Awaitable[None]]] = []

    @property
    def db(self) -> AsyncSession:
        """The request's session; committed by the framework when the handler returns."""
        if self._session is None:
            raise RuntimeError("this service has no database")
        return self._session

    def on_commit(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` once the request's transaction has committed (never if it rolls back).

        For side effects outside the database that must not happen unless the rows changed, such
        as deleting bytes whose rows are gone. A failure there is logged, not answered.
        """
        self.after_commit.append(action)

    def path(self, name: str) -> str:
        """A path parameter, as decoded by the router."""
        value: str = self.request.path_params[name]
        return value


Handler = Callable[[Call[Any, Any]], Awaitable[BaseModel | Response | None]]


@dataclass(frozen=True)
class Operation:
    """One HTTP operation of a service; `path` is relative to the service prefix."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status_code: int = 200
    errors: tuple[int, ...] = ()
    raw_body_media_type: str | None = None
    response_media_type: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


def _error_items(error: ValidationError, where: str) -> list[dict[str, Any]]:
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
    try:
        data = json.loads(chunks) if chunks else None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ValidationFailed([{"loc": ["body"], "msg": "Input should be a JSON object"}])
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ValidationFailed(_error_items(error, "body")) from None


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
        return Response(status_code=HTTPStatus.NO_CONTENT)
    return JSONResponse(result.model_dump(mode="json"), status_code=status_code)


_PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")


def openapi_document(
    *, title: str, version: str, prefix: str, operations: Sequence[Operation], description: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a service, from the same models that validate its requests."""
    models: list[tuple[type[BaseModel], Any]] = [(Problem, "serialization")]
    for op in operations:
        if op.body is not None:
            models.append((op.body, "validation"))
        if op.response is not None:
            models.append((op.response, "serialization"))
    refs, schemas = models_json_schema(models, ref_template="#/components/schemas/{model}")
    problem = {"application/problem+json": {"schema": refs[(Problem, "serialization")]}}

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method.lower()}_{op.handler.__name__}",
            "responses": {},
        }
        if op.tags:
            entry["tags"] = list(op.tags)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(op.path)
        ]
        if op.query is not None:
            query_schema = op.query.model_json_schema()
            required = set(query_schema.get("required", []))
            parameters += [
                {"name": name, "in": "query", "required": name in required, "schema": schema}
                for name, schema in query_schema.get("properties", {}).items()
            ]
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
            }
        elif op.raw_body_media_type is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {op.raw_body_media_type: {"schema": {"type": "string", "format": "binary"}}},
            }
        success: dict[str, Any] = {"description": HTTPStatus(op.status_code).phrase}
        if op.response is not None:
            success["content"] = {"application/json": {"schema": refs[(op.response, "serialization")]}}
        elif op.response_media_type is not None:
            success["content"] = {op.response_media_type: {"schema": {"type": "string", "format": "binary"}}}
        entry["responses"][str(op.status_code)] = success
        statuses = set(op.errors) | {503} | ({400} if op.body or op.query else set())
        for status in sorted(statuses):
            entry["responses"][str(status)] = {"description": HTTPStatus(status).phrase, "content": problem}
        paths.setdefault(prefix + op.path, {})[op.method.lower()] = entry

    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
