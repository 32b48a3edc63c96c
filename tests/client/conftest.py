"""The whole registry behind one front door, as a user's `depot` command sees it.

auth_service, package_service and the validator run on real HTTP with real PostgreSQL and S3
(`open_depot`), behind the path-routing front door of `make run`. The command runs as a
subprocess with its own config and state folders (XDG_*), so its credentials and upload state are
the test's; SDK calls from a test go through `asyncio.to_thread`, so the servers, which share the
test's event loop, keep answering.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devstack.frontdoor import create_frontdoor
from tests.conftest import Servers
from tests.helpers import real_server
from tests.integration.auth.conftest import ADMIN
from tests.integration.validator.conftest import Depot as Stack
from tests.integration.validator.conftest import open_depot

MiB = 1024 * 1024
DEPOT_COMMAND = [sys.executable, "-m", "depot_client"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@dataclass
class Registry:
    """The stack, its front door's URL, and a `depot` command with a home of its own."""

    stack: Stack
    url: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def environment(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
        return {**base, **self.env, **extra}

    async def start(self, *args: str, **extra: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *DEPOT_COMMAND, *args, env=self.environment(**extra),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def run(self, *args: str, **extra: str) -> Result:
        process = await self.start(*args, **extra)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
        assert process.returncode is not None
        return Result(process.returncode, stdout.decode(), stderr.decode())

    async def ok(self, *args: str, **extra: str) -> Result:
        result = await self.run(*args, **extra)
        assert result.code == 0, f"depot {' '.join(args)} exited {result.code}: {result.stderr}"
        return result

    async def login_admin(self) -> None:
        await self.ok("login", "--url", self.url, "-u", ADMIN[0], DEPOT_PASSWORD=ADMIN[1])

    @property
    def config_dir(self) -> Path:
        return self.home / "config" / "depot"

    @property
    def state_dir(self) -> Path:
        return self.home / "state" / "depot"

    def sdk(self, **options: Any) -> Any:
        """A `depot_client.Depot` of the same user (the same config folder), with transfer `options`."""
        from depot_client import Depot  # noqa: PLC0415
        from depot_client.transfer import TransferOptions  # noqa: PLC0415

        return Depot(config_dir=self.config_dir, options=TransferOptions(**options))


@pytest.fixture
def client_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG folders of the test's own, for the subprocess and for the SDK in the test's process."""
    home = tmp_path / "home"
    for name, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"), ("XDG_CACHE_HOME", "cache")):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(name, str(home / sub))
    return home


@pytest.fixture
async def registry(
    servers: Servers, database_url: str, bucket: str, tmp_path: Path, client_home: Path
) -> AsyncIterator[Registry]:
    async with open_depot(servers, database_url, bucket, tmp_path / "auth") as stack:
        routes = {
            "/auth": str(stack.auth.base_url).rstrip("/"),
            "/packages": str(stack.packages.base_url).rstrip("/"),
            "/validate": str(stack.validator.base_url).rstrip("/"),
        }
        async with real_server(create_frontdoor(routes)) as url:
            await stack.auth_admin()  # the bootstrapped admin exists
            yield Registry(stack, url, client_home, env={k: os.environ[k] for k in os.environ if k.startswith("XDG_")})
