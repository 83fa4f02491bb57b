"""When to send a request again, and how long to wait first.

Only failures that say "try again" are retried: connect errors, a connection lost before
anything reached the client, HTTP 429 and 5xx. A 4xx is the request's fault and goes back
to the client; a timeout would most likely repeat, so the router moves on to a fallback
instead. Waits are exponential backoff with full jitter (``U(0, min(max, base * 2**n))``,
which spreads a crowd of retries instead of synchronising it), at least the upstream's
``Retry-After``, and never past the request's deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from ragline.gateway.errors import UpstreamError, UpstreamStatusError

#: uvloop's clock counts milliseconds, cached per loop iteration, so a timeout set from the time
#: remaining can fire a little before the deadline; within this margin the deadline has passed.
_CLOCK_SLACK_S = 0.005


@dataclass(slots=True)
class Deadline:
    """A point on the monotonic clock by which the request must be answered."""

    seconds: float
    at: float = field(init=False)

    def __post_init__(self) -> None:
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.at - _CLOCK_SLACK_S


class RetryPolicy:
    def __init__(
        self,
        *,
        max_attempts: int = 3,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        max_retry_after: float = 30.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._rng = rng

    @staticmethod
    def retryable(err: UpstreamError) -> bool:
        return err.retryable

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry): full jitter."""
        cap = min(self.backoff_max, self.backoff_base * 2.0 ** max(retry - 1, 0))
        return cap * self._rng()

    @staticmethod
    def retry_after(err: UpstreamError) -> float | None:
        return err.retry_after if isinstance(err, UpstreamStatusError) else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
