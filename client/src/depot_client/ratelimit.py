"""`--limit-rate`: a transfer's bytes per second, shared by all the threads that move its parts or ranges."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?(?:/s)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_rate(text: str) -> int:
    """Bytes per second from `500K`, `10M`, `1.5G` or a plain number of bytes (units of 1024, as curl's)."""
    found = _RATE.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a rate: use a number of bytes per second, or one with K, M or G")
    rate = int(float(found.group(1)) * _UNITS[found.group(2).upper()])
    if rate < 1:
        raise ValueError(f"{text!r}: a rate must be at least one byte per second")
    return rate


class RateLimit:
    """At most `per_second` bytes a second over all callers of `take`, with no credit saved while idle.

    Every amount reserves the next slot of time its size is worth; a caller waits until its slot
    begins. Over any stretch of time, no more than one amount beyond the rate passes.
    """

    def __init__(
        self,
        per_second: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_second < 1:
            raise ValueError("per_second must be positive")
        self.per_second = per_second
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._free_at = 0.0

    def take(self, amount: int) -> None:
        with self._lock:
            now = self._clock()
            start = max(self._free_at, now)
            self._free_at = start + amount / self.per_second
        if start > now:
            self._sleep(start - now)


class Unlimited:
    """No limit (the default)."""

    def take(self, amount: int) -> None:
        pass


def rate_limit(per_second: int | None) -> RateLimit | Unlimited:
    return RateLimit(per_second) if per_second else Unlimited()
