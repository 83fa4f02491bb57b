"""A per-deployment circuit breaker: closed, open, half-open.

Closed: requests flow; outcomes are counted. The breaker opens after
``consecutive_failures`` failures in a row, or when at least ``min_requests`` outcomes
are in the window and ``failure_rate`` of them failed. Open: every request is refused at
once (a few attribute reads, no I/O) until ``cooldown`` has passed. Half-open: exactly
one request (the probe) is let through; its success closes the breaker, its failure
opens it for another cooldown. All state changes happen on the event loop thread, so no
locks are needed.

Across replicas (``gateway/fleet.py``): ``on_event`` hears the transitions this process's own
outcomes caused (tripped, closed by a probe, probe released), which the fleet broadcasts;
``open_for`` and ``close`` apply what another replica's breaker did. Neither does I/O here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import Enum, IntEnum


class BreakerState(IntEnum):
    """Values match the ragline_breaker_state gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class BreakerEvent(Enum):
    """A transition caused by this process's own outcomes (what the fleet broadcasts)."""

    TRIPPED = "tripped"
    """Opened (from closed, or a failed probe): open for a full cooldown from now."""
    CLOSED = "closed"
    """A request succeeded while not closed (the probe): closed."""
    PROBE_RELEASED = "probe_released"
    """The half-open probe ended without an outcome (client gone, 429): another may probe."""


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_consecutive",
        "_failures_in_window",
        "_on_change",
        "_opened_at",
        "_outcomes",
        "_probe_in_flight",
        "_state",
        "consecutive_failures",
        "cooldown",
        "failure_rate",
        "min_requests",
        "on_event",
    )

    def __init__(
        self,
        *,
        consecutive_failures: int = 5,
        failure_rate: float = 0.5,
        window: int = 20,
        min_requests: int = 10,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.consecutive_failures = consecutive_failures
        self.failure_rate = failure_rate
        self.min_requests = min_requests
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._outcomes: deque[bool] = deque(maxlen=window)  # True = failure
        self._failures_in_window = 0
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.on_event: Callable[[BreakerEvent], None] | None = None
        """Told of the transitions this process's outcomes cause (not of ``open_for``/``close``)."""

    # -- reading -----------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cooldown has passed reads as half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return self._state

    def available(self) -> bool:
        """Would a request be let through now? Does not claim the half-open probe."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at < self.cooldown:
            return False
        return not self._probe_in_flight

    @property
    def probing(self) -> bool:
        """Not closed, and the half-open probe is out (after ``acquire``: the caller holds it)."""
        return self._probe_in_flight and self._state is not BreakerState.CLOSED

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.cooldown - (self._clock() - self._opened_at))

    # -- writing -----------------------------------------------------------------------

    def acquire(self) -> bool:
        """Claim the right to send one request; in half-open only one caller gets it."""
        if self._state is BreakerState.CLOSED:
            return True
        if not self.available():
            return False
        if self._state is BreakerState.OPEN:
            self._set(BreakerState.HALF_OPEN)
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        if self._state is not BreakerState.CLOSED:
            self._probe_in_flight = False
            self._reset()
            self._set(BreakerState.CLOSED)
            self._emit(BreakerEvent.CLOSED)
            return
        self._consecutive = 0
        self._push(False)

    def record_failure(self) -> None:
        if self._state is not BreakerState.CLOSED:
            self._probe_in_flight = False
            self._trip()
            return
        self._consecutive += 1
        self._push(True)
        n = len(self._outcomes)
        if self._consecutive >= self.consecutive_failures or (
            n >= self.min_requests and self._failures_in_window >= self.failure_rate * n
        ):
            self._trip()

    def release(self) -> None:
        """The request ended without telling anything (cancelled by the client): free the probe slot."""
        if self._probe_in_flight:
            self._probe_in_flight = False
            if self._state is not BreakerState.CLOSED:
                self._emit(BreakerEvent.PROBE_RELEASED)

    # -- what another replica's breaker did ------------------------------------------------

    def open_for(self, seconds: float) -> None:
        """Open now, letting a probe through after ``seconds`` (at most a cooldown); no event."""
        seconds = min(max(seconds, 0.0), self.cooldown)
        self._probe_in_flight = False
        self._reset()
        self._opened_at = self._clock() - (self.cooldown - seconds)
        self._set(BreakerState.OPEN)

    def close(self) -> None:
        """Closed (another replica's probe succeeded); no event."""
        if self._state is BreakerState.CLOSED:
            return
        self._probe_in_flight = False
        self._reset()
        self._set(BreakerState.CLOSED)

    # -- internals -----------------------------------------------------------------------

    def _push(self, failed: bool) -> None:
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self._failures_in_window -= 1
        self._outcomes.append(failed)
        if failed:
            self._failures_in_window += 1

    def _reset(self) -> None:
        self._outcomes.clear()
        self._failures_in_window = 0
        self._consecutive = 0

    def _trip(self) -> None:
        self._opened_at = self._clock()
        self._reset()
        self._set(BreakerState.OPEN)
        self._emit(BreakerEvent.TRIPPED)

    def _emit(self, event: BreakerEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _set(self, state: BreakerState) -> None:
        changed = state is not self._state
        self._state = state
        if changed and self._on_change is not None:
            self._on_change(state)
