"""The image's command takes its keep-alive from the environment, as the task definition sets it.

On AWS the stack sets `UVICORN_TIMEOUT_KEEP_ALIVE` to the ALB's idle timeout plus 5 s
(tests/deploy/test_runtime.py); here the package_service image's command runs with a short value
from the environment and closes an idle connection after that long: neither uvicorn's default
(5 s) nor the image's own (65 s) is used instead.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from devstack.processes import free_port, spawn, stop, tail, wait_for_port
from tests.integration.test_containers import (
    BIN,
    ROOT,
    dockerfile_stages,
    image_environment,
    last_exec_form,
    service_environment,
)

__all__ = ["service_environment"]  # the fixture, used below

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEEP_ALIVE = 1


def seconds_until_closed(port: int) -> float:
    """Make one request on a new connection, then wait, idle, until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"GET /packages/health HTTP/1.1\r\nHost: depot\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
        )
        while len(body) < length:
            body += connection.recv(65536)
        idle_since = time.monotonic()
        assert connection.recv(1) == b"", "the server closes the idle connection"
        return time.monotonic() - idle_since


def test_the_image_command_closes_idle_connections_after_the_keep_alive_it_is_given(
    service_environment: dict[str, str], tmp_path: Path
) -> None:
    stage = dockerfile_stages()["package_service"]
    assert image_environment(stage)["UVICORN_TIMEOUT_KEEP_ALIVE"] != str(KEEP_ALIVE)
    port = free_port()
    env = image_environment(stage) | service_environment | {
        "UVICORN_PORT": str(port), "DEPOT_DATA_DIR": str(tmp_path), "UVICORN_TIMEOUT_KEEP_ALIVE": str(KEEP_ALIVE),
    }  # fmt: skip
    env["PATH"] = f"{BIN}:{env['PATH']}"
    log = tmp_path / "service.log"
    with log.open("wb") as output:
        process = spawn(last_exec_form(stage, "CMD"), env=env, output=output, cwd=ROOT)
    try:
        try:
            wait_for_port(port, process, 120)
        except RuntimeError as error:
            raise AssertionError(tail(log)) from error
        idle = seconds_until_closed(port)
        assert KEEP_ALIVE - 0.5 <= idle < 5 - 0.5, f"closed after {idle:.1f} s idle"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        stop(process)
