"""When a failed call may be made again, and how long to wait first.

Only calls that are safe to repeat are retried after a failure whose outcome is unknown (GET, HEAD,
and PUTs of presigned parts, which S3 overwrites). Any call is retried after a `429` or `503` that
carries `Retry-After` (the server says it did nothing), and after a connection that was never
made. Waits grow exponentially, with full jitter so that many clients do not retry in step.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field

import httpx

SAFE_METHODS = frozenset({"GET", "HEAD"})
# Answers that a retry of a safe call may cure: the server or a proxy on the way was busy or down.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Answers that say the request was not acted upon when they carry Retry-After: any call may be retried.
THROTTLE_STATUSES = frozenset({429, 503})
# Errors raised before the request reached the server.
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Errors after which nobody knows whether the server acted: only safe calls are repeated.
UNKNOWN_OUTCOME_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError,)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a call gets and the waits between them."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 120.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def should_retry_status(self, status: int, *, safe: bool, retry_after: float | None) -> bool:
        """Whether an answer with `status` may be retried, for a safe call or not."""
        if status in THROTTLE_STATUSES and retry_after is not None:
            return True
        return safe and status in RETRYABLE_STATUSES

    def should_retry_error(self, error: Exception, *, safe: bool) -> bool:
        """Whether a call that raised `error` (no answer came) may be made again."""
        if isinstance(error, NOT_SENT_ERRORS):
            return True
        return safe and isinstance(error, UNKNOWN_OUTCOME_ERRORS)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1` (`attempt` counts from 1)."""
        if retry_after is not None:
            # The server's word, plus a little jitter so that throttled clients spread out.
            return min(retry_after, self.max_retry_after) + self.rng.uniform(0, self.base_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return self.rng.uniform(0, ceiling)


NO_RETRY = RetryPolicy(attempts=1)
