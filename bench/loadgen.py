"""A closed-loop HTTP/1.1 load generator that costs the machine less than the server it loads.

`python -m bench.loadgen` reads a `Plan` (JSON) on stdin, keeps `connections` keep-alive connections
busy for a warm-up then `duration` seconds, and writes one JSON object (`Result`) on stdout. It runs
in a process of its own, so that its CPU is not the server's, and it meters the CPU of the server,
of PostgreSQL, of itself and of the rest of the machine over exactly the measured window.

What makes it cheap: uvloop, one `asyncio.Protocol` per connection (no coroutine or task per
request), requests built once as bytes, and responses framed by their `Content-Length` only (every
answer measured here has one; one without is counted as an error and its connection replaced).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import psutil  # type: ignore[import-untyped]
import uvloop

from bench.stats import MS, Summary, summarize

_CONTENT_LENGTH = b"\r\ncontent-length:"
_RECONNECT_PAUSE = 0.05  # seconds before a lost connection is replaced


@dataclass(frozen=True)
class Plan:
    """What to load and for how long."""

    host: str
    port: int
    requests: list[str]  # whole requests (head and empty line), Latin-1; one is picked at random each time
    connections: int
    warmup: float
    duration: float
    server_pid: int
    postgres_pid: int | None = None  # the postmaster: its backends are its children


@dataclass(frozen=True)
class Result:
    requests_per_second: float  # 2xx answers per second in the window
    latency_ms: Summary  # of the 2xx answers
    answers: int
    errors: int  # non-2xx answers and transport errors
    statuses: dict[str, int]
    first_error: str | None
    cpu_percent_of_one_core: dict[str, float]  # server, postgres, client, others


@dataclass
class _Tally:
    window_start: int = 0
    window_end: int = 0
    latencies: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None

    def record(self, ended: int, latency: int, status: str, sample: bytes = b"") -> None:
        if not self.window_start <= ended <= self.window_end:
            return
        if status.startswith("2"):
            self.latencies.append(latency)
        elif self.first_error is None:
            self.first_error = f"{status}: {sample[:300].decode('latin-1')}"
        self.statuses[status] = self.statuses.get(status, 0) + 1


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request, its answer, the next request."""

    def __init__(self, load: _Load) -> None:
        self._load = load
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._expected = -1  # bytes of the answer in flight (head and body), once its head is read
        self._status = ""
        self._started = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        if self._load.stopping:
            self._transport.close()
            return
        self._started = time.perf_counter_ns()
        self._transport.write(self._load.next_request())

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            if self._expected < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buffer[:end]).lower()
                self._status = head[9:12].decode("latin-1")
                at = head.find(_CONTENT_LENGTH)
                if at < 0:
                    self._fail("an answer without Content-Length")
                    return
                line_end = head.find(b"\r\n", at + 2)
                self._expected = end + 4 + int(head[at + len(_CONTENT_LENGTH) : None if line_end < 0 else line_end])
            if len(buffer) < self._expected:
                return
            sample = b"" if self._status.startswith("2") else bytes(buffer[: self._expected])
            ended = time.perf_counter_ns()
            self._load.tally.record(ended, ended - self._started, self._status, sample)
            del buffer[: self._expected]
            self._expected = -1
            self._send()
            if not buffer:
                return

    def _fail(self, reason: str) -> None:
        self._load.tally.record(time.perf_counter_ns(), 0, "transport error", reason.encode())
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._load.stopping:
            if self._expected >= 0 or exc is not None:
                self._load.tally.record(time.perf_counter_ns(), 0, "transport error", repr(exc).encode())
            self._load.replace(self)
        self._load.closed(self)


class _Load:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.tally = _Tally()
        self.stopping = False
        self._requests = [request.encode("latin-1") for request in plan.requests]
        self._choice = random.Random(20240601).choice
        self._open: set[_Connection] = set()
        self._all_closed = asyncio.Event()

    def next_request(self) -> bytes:
        return self._choice(self._requests)

    async def open_one(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(lambda: _Connection(self), self.plan.host, self.plan.port)
        except OSError as error:
            self.tally.record(time.perf_counter_ns(), 0, "transport error", repr(error).encode())
            await asyncio.sleep(_RECONNECT_PAUSE)
            if not self.stopping:
                asyncio.get_running_loop().create_task(self.open_one())
            return
        self._open.add(connection)

    def replace(self, _: _Connection) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(_RECONNECT_PAUSE, lambda: None if self.stopping else loop.create_task(self.open_one()))

    def closed(self, connection: _Connection) -> None:
        self._open.discard(connection)
        if self.stopping and not self._open:
            self._all_closed.set()

    async def run(self) -> Result:
        plan = self.plan
        await asyncio.gather(*(self.open_one() for _ in range(plan.connections)))
        await asyncio.sleep(plan.warmup)
        meter = _CpuMeter(plan.server_pid, plan.postgres_pid)
        self.tally.window_start = time.perf_counter_ns()
        self.tally.window_end = self.tally.window_start + int(plan.duration * 1e9)
        await asyncio.sleep(plan.duration)
        cpu = meter.percent()
        seconds = (time.perf_counter_ns() - self.tally.window_start) / 1e9
        self.stopping = True
        if self._open:  # each connection closes once its request in flight is answered
            try:
                async with asyncio.timeout(30):
                    await self._all_closed.wait()
            except TimeoutError:
                pass
        tally = self.tally
        answers = sum(tally.statuses.values())
        return Result(
            requests_per_second=round(len(tally.latencies) / seconds, 1),
            latency_ms=summarize(tally.latencies, MS),
            answers=answers,
            errors=answers - len(tally.latencies),
            statuses=dict(sorted(tally.statuses.items())),
            first_error=tally.first_error,
            cpu_percent_of_one_core=cpu,
        )


class _CpuMeter:
    """CPU seconds of the server, PostgreSQL (postmaster and backends), this process and the machine, from now."""

    def __init__(self, server_pid: int, postgres_pid: int | None) -> None:
        self._server = psutil.Process(server_pid)
        self._postgres = psutil.Process(postgres_pid) if postgres_pid is not None else None
        self._start = time.perf_counter()
        self._before = self._read()

    def _read(self) -> dict[str, float]:
        times = os.times()
        machine = psutil.cpu_times()
        return {
            "server": _busy(self._server),
            "postgres": self._postgres_seconds(),
            "client": times.user + times.system,
            "machine": machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal,
        }

    def _postgres_seconds(self) -> float:
        if self._postgres is None:
            return 0.0
        return _busy(self._postgres) + sum(_busy(child) for child in self._postgres.children(recursive=True))

    def percent(self) -> dict[str, float]:
        after = self._read()
        seconds = time.perf_counter() - self._start
        used = {name: after[name] - self._before[name] for name in after}
        # Backends that ended meanwhile are missing from `postgres`: they count as others.
        used["others"] = max(0.0, used.pop("machine") - used["server"] - used["postgres"] - used["client"])
        return {name: round(100 * value / seconds, 1) for name, value in used.items()}


def _busy(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def request_bytes(host: str, port: int, path: str, headers: dict[str, str]) -> str:
    """A GET request as the load sends it (Latin-1 text)."""
    fields = {"Host": f"{host}:{port}", **headers}
    return f"GET {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in fields.items()) + "\r\n"


def main() -> None:
    plan = Plan(**json.loads(sys.stdin.read()))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(_Load(plan).run())
    json.dump(asdict(result), sys.stdout)


def parse_result(text: str) -> Result:
    """The `Result` a load generator printed."""
    data: dict[str, Any] = json.loads(text)
    data["latency_ms"] = Summary(**data["latency_ms"])
    return Result(**data)


if __name__ == "__main__":
    main()
