"""Figures shared by the benchmarks: latency summaries and progress lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

US = 1_000.0
MS = 1_000_000.0


@dataclass(frozen=True)
class Summary:
    """Latency figures in one unit (µs for in-process calls, ms for HTTP)."""

    count: int
    mean: float
    p50: float
    p99: float
    max: float


def percentile(ordered: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil(n * fraction), at least 1
    return ordered[int(rank) - 1]


def summarize(samples_ns: Sequence[int], unit_ns: float) -> Summary:
    """Mean, p50, p99 and max of samples in nanoseconds, in the given unit."""
    if not samples_ns:
        return Summary(0, float("nan"), float("nan"), float("nan"), float("nan"))
    ordered = sorted(samples_ns)
    return Summary(
        count=len(ordered),
        mean=round(sum(ordered) / len(ordered) / unit_ns, 3),
        p50=round(percentile(ordered, 0.50) / unit_ns, 3),
        p99=round(percentile(ordered, 0.99) / unit_ns, 3),
        max=round(ordered[-1] / unit_ns, 3),
    )


def progress(message: str) -> None:
    """A progress line, marked so that it is not mistaken for a figure."""
    print(f"# {message}", flush=True)
