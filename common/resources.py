"""What a running service holds for its lifetime, and the one way to reach it.

Handlers reach it as `call.resources`; work that outlives requests (workers, sweeps) is bound
to it in the service's lifespan (`ServiceBound`). Tasks that a request starts but that must
outlive it (an audit line written after a download ends, an upload aborted while the request is
being cancelled) are the app's (`spawn`): kept alive, and awaited when the service stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from common.auth import Principal, TokenVerifier
from common.logging import error_fields
from common.reads import Reads
from common.s3 import S3
from common.settings import CommonSettings

log = structlog.get_logger("depot.resources")

Check = Callable[[], Awaitable[object]]
"""A readiness check: returns when the dependency answers, raises (or times out) when not."""
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]
"""`Resources.spawn`, as flows that start work outliving their request receive it."""
ConfirmCaller = Callable[[Reads, Principal], Awaitable[object]]
"""A service's own check that a verified caller still stands (auth_service holds the accounts); it reads
outside any transaction, so that it holds no connection while the request then reads its body. What it
returns is handed to the handler (`Call.confirmed`)."""


@dataclass
class Resources:
    """The running service's pool, S3 clients, token verifier, readiness checks and owned tasks."""

    settings: CommonSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    s3_clients: S3 | None
    verifier: TokenVerifier | None
    confirm_caller: ConfirmCaller | None = None
    checks: dict[str, Check] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @cached_property
    def reads(self) -> Reads:
        """Statements outside any transaction, on the pool (`common.reads`)."""
        return Reads(self.engine)

    @property
    def s3(self) -> S3:
        """The S3 clients (for services that store bytes)."""
        if self.s3_clients is None:
            raise RuntimeError("this service runs without S3")
        return self.s3_clients

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run `work` on its own, owned by the app: it outlives the request that starts it (even a
        cancelled one) and is awaited when the service stops. Its failure is logged."""
        task = asyncio.create_task(self._logged(work, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, seconds: float) -> None:
        """Wait for the owned tasks (at shutdown), cancelling those still running after `seconds`."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=seconds)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("owned_tasks_cancelled_at_shutdown", count=len(pending))
            await asyncio.wait(pending)

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await work
        except Exception as error:  # noqa: BLE001 - nobody awaits it but the shutdown: its failure is logged here
            log.warning("owned_task_failed", task=name, **error_fields(error))


class ServiceBound:
    """Work that outlives requests and uses the running service's resources (bound in its lifespan)."""

    _resources: Resources | None = None

    def bind(self, bound: Resources) -> None:
        """Give the running service's resources to this object."""
        self._resources = bound

    @property
    def _bound(self) -> Resources:
        if self._resources is None:
            raise RuntimeError("the service is not running")
        return self._resources

    @property
    def _s3(self) -> S3:
        return self._bound.s3
