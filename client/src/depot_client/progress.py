"""Progress of one transfer: a bar on a terminal, a plain line every few seconds elsewhere, or nothing.

Workers call `advance` from several threads; every implementation is thread-safe.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

PLAIN_INTERVAL_SECONDS = 5.0


class Reporter(Protocol):
    def start(self, label: str, total: int) -> None: ...

    def advance(self, amount: int) -> None: ...

    def finish(self) -> None: ...


class Silent:
    """No output (`--quiet`, or the SDK by default)."""

    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass


def human_bytes(amount: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


class PlainLines:
    """A line every few seconds, and one at the end: for logs, where carriage returns make a mess."""

    def __init__(self, stream: IO[str] | None = None, interval: float = PLAIN_INTERVAL_SECONDS) -> None:
        self._stream = stream or sys.stderr
        self._interval = interval
        self._lock = threading.Lock()
        self._label = ""
        self._total = 0
        self._done = 0
        self._started = 0.0
        self._last_line = 0.0

    def start(self, label: str, total: int) -> None:
        with self._lock:
            self._label, self._total, self._done = label, total, 0
            self._started = self._last_line = time.monotonic()

    def advance(self, amount: int) -> None:
        with self._lock:
            self._done += amount
            now = time.monotonic()
            if now - self._last_line >= self._interval:
                self._last_line = now
                self._write(now)

    def finish(self) -> None:
        with self._lock:
            self._write(time.monotonic(), final=True)

    def _write(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self._started, 1e-6)
        rate = self._done / elapsed
        share = f" ({100 * self._done / self._total:.0f}%)" if self._total else ""
        if final:
            tail = f" in {elapsed:.1f} s"
        elif rate > 0:
            tail = f", {(self._total - self._done) / rate:.0f} s left"
        else:
            tail = ""
        line = f"{self._label}: {human_bytes(self._done)} of {human_bytes(self._total)}{share}, "
        self._stream.write(f"{line}{human_bytes(rate)}/s{tail}\n")
        self._stream.flush()


class _BinaryRate(ProgressColumn):
    """The rate in the bar's units (MiB/s next to MiB; rich's own column counts in MB)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{human_bytes(speed)}/s", style="progress.data.speed")


class Bar:
    """One rich bar for the whole transfer: bytes, rate and time left."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _BinaryRate(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task: TaskID | None = None
        self._lock = threading.Lock()

    def start(self, label: str, total: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(label, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            with self._lock:
                self._progress.advance(self._task, amount)

    def finish(self) -> None:
        self._progress.stop()


def for_terminal(quiet: bool, stream: IO[str] | None = None) -> Reporter:
    """What to show on `stream` (stderr): nothing with `quiet`, a bar on a terminal, else plain lines."""
    stream = stream or sys.stderr
    if quiet:
        return Silent()
    if stream.isatty():
        return Bar(Console(file=stream))
    return PlainLines(stream)
