"""Liveness and readiness, the same in every service (API.md section 1)."""

from __future__ import annotations

import asyncio
from typing import Literal

import structlog
from pydantic import BaseModel

from common import DEPOT_VERSION
from common.api import Call, Operation
from common.errors import ServiceUnavailable
from common.logging import error_fields
from common.resources import Check

log = structlog.get_logger("depot.health")


class Health(BaseModel):
    status: Literal["ok"]
    service: str
    version: str


class Readiness(BaseModel):
    status: Literal["ok"]
    checks: dict[str, str]


async def run_check(check: Check, limit_seconds: float) -> str:
    """`ok`, `timeout` or `unavailable`: one dependency's answer, within `limit_seconds`."""
    try:
        await asyncio.wait_for(check(), limit_seconds)
    except TimeoutError:
        return "timeout"
    except Exception as error:  # noqa: BLE001 - any failure of a dependency means "not ready"
        # The reason goes to the log only: it can name internal hosts.
        log.warning("readiness_check_failed", **error_fields(error))
        return "unavailable"
    return "ok"


def health_operations(service: str) -> list[Operation]:
    """`GET /health` (the process answers) and `GET /health/ready` (every dependency answers)."""

    async def health(_: Call[None, None]) -> Health:
        return Health(status="ok", service=service, version=DEPOT_VERSION)

    async def ready(call: Call[None, None]) -> Readiness:
        checks = call.resources.checks
        timeout = call.resources.settings.ready_check_timeout_seconds
        outcomes = await asyncio.gather(*(run_check(check, timeout) for check in checks.values()))
        results = dict(zip(checks, outcomes, strict=True))
        failing = [name for name, outcome in results.items() if outcome != "ok"]
        if failing:
            raise ServiceUnavailable(f"Not ready: {', '.join(failing)}.", extensions={"checks": results})
        return Readiness(status="ok", checks=results)

    return [
        Operation("GET", "/health", health, "Liveness: the process answers (checks no dependency).",
                  auth="none", response=Health, tags=("health",), read_only=True),
        Operation("GET", "/health/ready", ready, "Readiness: every dependency answers.",
                  auth="none", response=Readiness, tags=("health",), read_only=True),
    ]  # fmt: skip
