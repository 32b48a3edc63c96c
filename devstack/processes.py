"""Child processes that never outlive the program that started them, and free ports."""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None]:
    # Linux delivers `sig` to the child when its parent dies, even by SIGKILL, so a crashed
    # `make run` or test session cannot leave servers behind.
    def arm() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return arm


def spawn(
    args: Sequence[str],
    *,
    output: int | IO[Any] | None = subprocess.DEVNULL,
    user: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    death_signal: int = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start `args` in its own session (a terminal's Ctrl-C reaches only the parent), tied to our life."""
    return subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        user=user,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent(death_signal),  # noqa: PLW1509 - no threads have started when servers spawn
    )


def stop(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Ask a child to stop, wait for it, and kill it if it does not."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we could reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_free_ports(ports: Sequence[int], timeout: float) -> list[int]:
    """Wait until every port is free (a server from a crashed run may still be stopping); the busy ones."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [port for port in ports if not port_is_free(port)]
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.2)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# Ports for servers are taken below the kernel's ephemeral range (where it picks the local port of
# every outgoing connection): a server stopped on an ephemeral port may find it taken by any client
# of the machine when it starts again; below the range, only another server can hold it.
_SERVER_PORTS = range(10000, 20000)


def ephemeral_ports() -> range:
    """The ports the kernel gives to outgoing connections."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_port() -> int:
    """A port free right now that no outgoing connection will take: a server may stop and start on it."""
    ephemeral = ephemeral_ports()
    for _ in range(1000):
        port = _SERVER_PORTS.start + secrets.randbelow(len(_SERVER_PORTS))
        if port not in ephemeral and port_is_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # every candidate taken: any free port
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float, host: str = "127.0.0.1") -> None:
    """Wait until host:port accepts connections; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with status {process.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
