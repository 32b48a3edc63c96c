"""ECS task scale-in protection while this process validates something.

On ECS, the agent gives every container `ECS_AGENT_URI`; a `PUT` to
`$ECS_AGENT_URI/task-protection/v1/state` with `{"ProtectionEnabled": true, "ExpiresInMinutes": N}`
keeps the task from being stopped by a scale-in or a deployment for N minutes, and
`{"ProtectionEnabled": false}` makes it eligible again. The agent calls ECS's
`UpdateTaskProtection` with the task's own role, which must allow it.

A task holds protection while its worker runs at least one job and lets it go when it runs none,
so that autoscaling takes idle tasks away and never one half way through a validation. While
jobs run, protection is renewed before it expires (a process that hangs stops renewing, and its
protection lapses). A task busy without a break for `max_minutes` lets protection go even so:
otherwise a steady backlog would keep every old task protected and hold a deployment back for
ever; a job stopped then is retried by the queue, like any interrupted attempt.

Without `ECS_AGENT_URI` (not on ECS) nothing is sent. The agent's answers never stop a job: a
failure is logged and tried again a little later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog

from common.logging import error_fields
from common.queue import wait_for_event

log = structlog.get_logger(__name__)

PATH = "/task-protection/v1/state"
RETRY_SECONDS = 5.0
"""Wait before asking the agent again after it failed or refused."""
AGENT_TIMEOUT_SECONDS = 5.0


class ScaleInProtection:
    """Protection from scale-in for as long as jobs are held (`holding`), kept by `running`."""

    def __init__(
        self,
        agent_uri: str | None,
        *,
        expires_minutes: int,
        max_minutes: float,
        renew_seconds: float | None = None,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        if expires_minutes < 1 or max_minutes <= 0:
            raise ValueError("expires_minutes must be at least 1 and max_minutes positive")
        self.url = agent_uri.rstrip("/") + PATH if agent_uri else None
        self.expires_minutes = expires_minutes
        self.max_seconds = max_minutes * 60
        # Renewed at half its life: one failed call still leaves time for the next.
        self.renew_seconds = renew_seconds if renew_seconds is not None else expires_minutes * 30
        self.retry_seconds = retry_seconds
        self.protected = False  # what the agent last confirmed
        self._jobs = 0
        self._busy_since: float | None = None
        self._renew_at = 0.0
        self._changed = asyncio.Event()

    @property
    def enabled(self) -> bool:
        """Whether this process runs on ECS (the agent's endpoint is known)."""
        return self.url is not None

    @asynccontextmanager
    async def holding(self) -> AsyncIterator[None]:
        """Hold protection for the block (one job); it goes when no block is left."""
        self._jobs += 1
        self._changed.set()
        try:
            yield
        finally:
            self._jobs -= 1
            self._changed.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScaleInProtection]:
        """Keep the agent told while the block runs (does nothing off ECS)."""
        if self.url is None:
            yield self
            return
        async with httpx.AsyncClient(timeout=AGENT_TIMEOUT_SECONDS) as client:
            keeper = asyncio.create_task(self._keep(client, self.url), name="scale-in protection")
            try:
                yield self
            finally:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)

    async def _keep(self, client: httpx.AsyncClient, url: str) -> None:
        while True:
            self._changed.clear()
            now = time.monotonic()
            if self._jobs == 0:
                self._busy_since = None
            elif self._busy_since is None:
                self._busy_since = now
            busy_for = 0.0 if self._busy_since is None else now - self._busy_since
            wanted = self._jobs > 0 and busy_for < self.max_seconds
            wait: float | None = None
            if wanted != self.protected or (wanted and now >= self._renew_at):
                if await self._put(client, url, wanted, busy_for):
                    self.protected = wanted
                    self._renew_at = now + self.renew_seconds
                else:
                    wait = self.retry_seconds
            if wait is None and self.protected:
                # Wake to renew, or to let go once the task has been busy for too long.
                wait = max(0.0, min(self._renew_at - now, self.max_seconds - busy_for))
            if wait is None:
                await self._changed.wait()  # nothing to renew: until a job starts or ends
            else:
                await wait_for_event(self._changed, wait)

    async def _put(self, client: httpx.AsyncClient, url: str, enabled: bool, busy_for: float) -> bool:
        body: dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = self.expires_minutes
        try:
            response = await client.put(url, json=body)
            answer = response.json() if response.content else {}
        except Exception as error:  # noqa: BLE001 - the agent's trouble must never stop a job
            log.warning("scale_in_protection_failed", protection_enabled=enabled, **error_fields(error))
            return False
        protection = answer.get("protection") if isinstance(answer, dict) else None
        if response.status_code != 200 or not isinstance(protection, dict):
            reason = answer.get("failure") or answer.get("error") if isinstance(answer, dict) else None
            log.warning(
                "scale_in_protection_refused", protection_enabled=enabled, status=response.status_code,
                reason=reason,
            )  # fmt: skip
            return False
        if not enabled and self._jobs > 0:
            log.warning("scale_in_protection_released_while_busy", busy_seconds=round(busy_for), jobs=self._jobs)
        else:
            log.info(
                "scale_in_protection_set", protection_enabled=enabled, expires_in_minutes=body.get("ExpiresInMinutes")
            )
        return True
