"""ECS task scale-in protection while the validator works, against a stand-in for the ECS agent.

The stand-in serves `PUT $ECS_AGENT_URI/task-protection/v1/state` over real HTTP and answers as
the agent does (`{"protection": {...}}`, `{"failure": {...}}` or `{"error": {...}}`); it records
every request, so the tests see what a task would have told ECS and when.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog.testing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.processes import free_port
from tests.helpers import eventually, in_process, real_server
from tests.integration.validator.conftest import Depot, zip_of
from validator_service.app import create_app
from validator_service.protection import ScaleInProtection
from validator_service.settings import ValidatorSettings

TASK_ARN = "arn:aws:ecs:eu-west-1:111111111111:task/depot/0123456789abcdef"


@dataclass
class Agent:
    """The ECS agent's task protection endpoint, recording what it is told."""

    uri: str = ""  # what ECS puts in ECS_AGENT_URI
    bodies: list[dict[str, Any]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # "error" or "failure" for the next calls; then success

    @property
    def states(self) -> list[bool]:
        return [bool(body["ProtectionEnabled"]) for body in self.bodies]

    async def state(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.bodies.append(body)
        answer = self.answers.pop(0) if self.answers else "ok"
        if answer == "error":
            return JSONResponse({"error": {"Code": "ServerException", "Message": "throttled"}}, status_code=500)
        if answer == "failure":
            return JSONResponse({"failure": {"Arn": TASK_ARN, "Reason": "TASK_NOT_VALID"}})
        protection = {"ProtectionEnabled": body["ProtectionEnabled"], "TaskArn": TASK_ARN}
        if body["ProtectionEnabled"]:
            protection["ExpirationDate"] = "2030-01-01T00:10:00Z"
        return JSONResponse({"requestID": "r-1", "protection": protection})


@asynccontextmanager
async def ecs_agent() -> AsyncIterator[Agent]:
    agent = Agent()
    app = Starlette(routes=[Route("/api/task-id/task-protection/v1/state", agent.state, methods=["PUT"])])
    async with real_server(app) as url:
        agent.uri = f"{url}/api/task-id"
        yield agent


async def test_a_task_is_protected_while_it_holds_jobs_and_released_when_it_holds_none() -> None:
    async with ecs_agent() as agent:
        protection = ScaleInProtection(agent.uri, expires_minutes=7, max_minutes=30)
        async with protection.running():
            async with protection.holding():
                await eventually(lambda: agent.states == [True], message="protection asked for")
                assert agent.bodies == [{"ProtectionEnabled": True, "ExpiresInMinutes": 7}]
                async with protection.holding():  # a second job at once: nothing more to ask
                    pass
                assert agent.states == [True]
            # The agent records the call before the task reads its answer: wait for both.
            await eventually(
                lambda: agent.states == [True, False] and not protection.protected, message="protection released"
            )
            assert agent.bodies[-1] == {"ProtectionEnabled": False}
            async with protection.holding():
                await eventually(lambda: agent.states == [True, False, True], message="protected again")


async def test_protection_is_renewed_while_a_long_job_runs() -> None:
    async with ecs_agent() as agent:
        protection = ScaleInProtection(agent.uri, expires_minutes=1, max_minutes=30, renew_seconds=0.2)
        async with protection.running(), protection.holding():
            await eventually(lambda: len(agent.states) >= 4, message="renewals")
        assert set(agent.states[:4]) == {True}, "renewed, never dropped while busy"


async def test_a_task_busy_for_too_long_lets_protection_go_so_that_a_deployment_can_proceed() -> None:
    async with ecs_agent() as agent:
        protection = ScaleInProtection(agent.uri, expires_minutes=10, max_minutes=0.5 / 60)
        with structlog.testing.capture_logs() as logs:
            async with protection.running(), protection.holding():
                await eventually(
                    lambda: agent.states == [True, False] and not protection.protected,
                    message="released after max_minutes",
                )
        released = [e for e in logs if e["event"] == "scale_in_protection_released_while_busy"]
        assert len(released) == 1
        assert released[0]["jobs"] == 1


async def test_the_agent_failing_is_logged_retried_and_never_stops_a_job() -> None:
    async with ecs_agent() as agent:
        agent.answers = ["error", "failure"]
        protection = ScaleInProtection(agent.uri, expires_minutes=10, max_minutes=30, retry_seconds=0.1)
        with structlog.testing.capture_logs() as logs:
            async with protection.running(), protection.holding():
                await eventually(lambda: protection.protected, message="protected after two refusals")
                assert agent.states == [True, True, True]
        refused = [e for e in logs if e["event"] == "scale_in_protection_refused"]
        assert [(e["status"], json.dumps(e["reason"])) for e in refused] == [
            (500, json.dumps({"Code": "ServerException", "Message": "throttled"})),
            (200, json.dumps({"Arn": TASK_ARN, "Reason": "TASK_NOT_VALID"})),
        ]
    # No agent at all (nothing listens there): the job goes on, the failure is logged.
    gone = ScaleInProtection(f"http://127.0.0.1:{free_port()}/api/x", expires_minutes=10, max_minutes=30)
    with structlog.testing.capture_logs() as logs:
        async with gone.running(), gone.holding():
            await eventually(
                lambda: any(e["event"] == "scale_in_protection_failed" for e in logs),
                message="the unreachable agent logged",
            )
            assert gone.protected is False


async def test_off_ecs_nothing_is_asked() -> None:
    async with ecs_agent() as agent:
        protection = ScaleInProtection(None, expires_minutes=10, max_minutes=30)
        assert not protection.enabled
        async with protection.running(), protection.holding():
            pass
        assert agent.bodies == []
    assert ValidatorSettings().ecs_agent_uri is None


async def test_the_validator_holds_protection_exactly_while_it_validates(
    depot: Depot, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ecs_agent() as agent:
        # As ECS gives it to the container: an environment variable without Depot's prefix.
        monkeypatch.setenv("ECS_AGENT_URI", agent.uri)
        settings = ValidatorSettings(**depot.validator_settings)
        assert settings.ecs_agent_uri == agent.uri
        app = create_app(settings)
        async with in_process(app):
            await depot.validator_app.state.validation.worker.stop()  # only the validator on ECS takes jobs
            validation = app.state.validation
            assert agent.bodies == [], "no job, no protection"
            await depot.create("protected")
            await depot.upload("protected", "1.0.0", zip_of({"a.txt": b"a"}), filename="a.zip")
            decided = await depot.decided("protected", "1.0.0")
            assert decided["status"] == "available"
            await eventually(
                lambda: agent.states == [True, False] and not validation.protection.protected,
                message="protected, then released",
            )
            assert agent.bodies[0]["ExpiresInMinutes"] == settings.scale_in_protection_minutes
