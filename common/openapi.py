"""The OpenAPI 3.1 document of a service, generated from its declared operations.

The same models that validate requests describe them; each operation's security, header
parameters and statuses come from its declaration (`common.api.Operation`), so the document
cannot say something the service does not do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from common.api import Operation

BEARER = "bearer"
_ROLE_NOTES = {"admin": "Admins only.", "service_or_admin": "Services and admins only."}
_PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")


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
        paths.setdefault(prefix + op.path, {})[op.method.lower()] = _operation(op, refs, problem)

    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from /auth/login or /auth/token.",
                }
            },
        },
    }


def _operation(op: Operation, refs: dict[Any, Any], problem: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"summary": op.summary, "operationId": op.operation_id}
    if op.tags:
        entry["tags"] = list(op.tags)
    if op.auth != "none":
        entry["security"] = [{BEARER: []}]
    if op.auth in _ROLE_NOTES:
        entry["description"] = _ROLE_NOTES[op.auth]
    parameters = _parameters(op)
    if parameters:
        entry["parameters"] = parameters
    if op.body is not None:
        entry["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
        }
    elif op.raw_body_media_type is not None:
        binary = {"schema": {"type": "string", "format": "binary"}}
        entry["requestBody"] = {"required": True, "content": {op.raw_body_media_type: binary}}
    success: dict[str, Any] = {"description": HTTPStatus(op.status_code).phrase}
    if op.response is not None:
        success["content"] = {"application/json": {"schema": refs[(op.response, "serialization")]}}
    elif op.response_media_type is not None:
        success["content"] = {op.response_media_type: {"schema": {"type": "string", "format": "binary"}}}
    responses: dict[str, Any] = {str(op.status_code): success}
    for status, text in op.responses.items():
        responses[str(status)] = {"description": text}
    for status in op.problem_statuses:
        responses[str(status)] = {"description": HTTPStatus(status).phrase, "content": problem}
    entry["responses"] = dict(sorted(responses.items()))
    return entry


def _parameters(op: Operation) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
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
    for header in op.headers:
        parameter: dict[str, Any] = {
            "name": header.name, "in": "header", "required": False, "description": header.description,
            "schema": {"type": "string"},
        }  # fmt: skip
        if header.example is not None:
            parameter["example"] = header.example
        parameters.append(parameter)
    return parameters
