"""The real AWS CLI, warm: every call is a new process forked from one that imported the CLI once.

    <the AWS CLI's interpreter> aws_zygote.py SOCKET   serves until killed
    aws_zygote.call(SOCKET, argv, stdout)              (in the `aws` stub) one command, its exit status

A deploy test runs a hundred `aws` commands, and each spent 0.3 s of its 0.5 s importing the CLI.
This process imports it, then serves each connection on the Unix socket SOCKET in a child of its
own: the child takes the caller's argv, environment, working directory and standard streams (three
file descriptors passed over the socket), runs the CLI's `main()` as the `aws` script does, and
writes its exit status back. Nothing is shared between calls but the imported modules: the CLI's
session, credentials and configuration are made in the child, from the caller's environment.
Standard library only: the server runs with the CLI's Python, the client with the tests'.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

HEADER_BYTES = 8  # the request's length, then the request (JSON): {"argv", "env", "cwd"}


def serve(path: str) -> None:
    import awscli  # noqa: PLC0415 - imported here once, for every child
    import awscli.clidriver  # noqa: PLC0415

    data_path = os.environ["AWS_DATA_PATH"].split(os.pathsep)[-1]  # the folder `import awscli` adds to it

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(16)
        print("ready", flush=True)
        while True:
            connection, _ = server.accept()
            if os.fork() == 0:
                server.close()
                _run(connection, awscli.clidriver.main, data_path)
            connection.close()


def call(path: str, argv: list[str], stdout: int = 1) -> int | None:
    """`aws ARGV` run by the warm CLI at `path`, with this process's stdin, `stdout` and stderr: its exit
    status, or None when there is no warm CLI there (nothing was run)."""
    request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(path)
        except OSError:  # none, or gone
            return None
        socket.send_fds(connection, [len(request).to_bytes(HEADER_BYTES, "big")], [0, stdout, 2])
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(64):
            answer += chunk
    return int(answer) if answer.isdigit() else 255  # no status: the child died


def _receive(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    header, fds, _, _ = socket.recv_fds(connection, HEADER_BYTES, 3)
    size = int.from_bytes(header, "big")
    payload = b""
    while len(payload) < size:
        chunk = connection.recv(size - len(payload))
        if not chunk:
            raise ConnectionError("the request was cut short")
        payload += chunk
    return json.loads(payload), fds


def _run(connection: socket.socket, main: Callable[[], int], data_path: str) -> None:
    """In the child: become `aws ARGV` as the caller would have run it, then exit with its status."""
    code = 255
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        request, fds = _receive(connection)
        for target, fd in enumerate(fds):  # stdin, stdout, stderr
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(str(request["cwd"]))
        os.environ.clear()
        os.environ.update(request["env"])
        if os.environ.get("LC_CTYPE", "") == "UTF-8":  # as the `aws` script does
            os.environ["LC_CTYPE"] = "en_US.UTF-8"
        # What importing awscli does to the environment, done again to the caller's.
        searched = [
            os.path.expanduser(os.path.expandvars(p)) for p in os.environ.get("AWS_DATA_PATH", "").split(os.pathsep)
        ]
        os.environ["AWS_DATA_PATH"] = os.pathsep.join(
            [*searched, data_path] if "AWS_DATA_PATH" in os.environ else [data_path]
        )
        sys.argv = ["aws", *request["argv"]]
        try:
            code = main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        try:
            connection.sendall(str(code).encode())
        finally:
            os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    serve(sys.argv[1])
