"""A deployment as the router sees it: the deployment plus its live state.

The state is what balancers and the router read on every request: requests in flight,
a latency EWMA, the circuit breaker, health, and a Retry-After cool-down. One Member per
deployment, shared by every model group that lists it, so a deployment that fails for
one model name is avoided by all of them.
"""

from __future__ import annotations

import time

from ragline.gateway.breaker import BreakerState, CircuitBreaker
from ragline.gateway.deployment import Deployment
from ragline.gateway.health import HealthState
from ragline.observability.metrics import DEPLOYMENT_IN_FLIGHT

#: Weight of the newest observation in the latency EWMA.
LATENCY_ALPHA = 0.3


class Member:
    __slots__ = (
        "_in_flight_gauge",
        "breaker",
        "cooling_until",
        "deployment",
        "health",
        "in_flight",
        "latency",
        "name",
        "weight",
    )

    def __init__(
        self, deployment: Deployment, breaker: CircuitBreaker, health: HealthState, *, weight: float = 1.0
    ) -> None:
        self.deployment = deployment
        self.name = deployment.name
        self.weight = weight
        self.breaker = breaker
        self.health = health
        self.in_flight = 0
        #: Seconds (EWMA of the total latency, or of the time to first token for streams); None = unknown.
        self.latency: float | None = None
        #: Monotonic time before which the deployment asked not to be called (Retry-After).
        self.cooling_until = 0.0
        self._in_flight_gauge = DEPLOYMENT_IN_FLIGHT.labels(deployment=self.name)

    def available(self, now: float) -> bool:
        """In rotation now: healthy, not cooling down, and the breaker would let a request through."""
        return self.health.healthy and now >= self.cooling_until and self.breaker.available()

    def why_unavailable(self, now: float) -> str:
        if not self.health.healthy:
            return f"deployment '{self.name}': failing health checks"
        if now < self.cooling_until:
            return f"deployment '{self.name}': rate limited for {self.cooling_until - now:.1f} s more"
        if self.breaker.state is BreakerState.OPEN:
            return (
                f"deployment '{self.name}': circuit breaker open (retry in {self.breaker.retry_in():.1f} s)"
            )
        return f"deployment '{self.name}': circuit breaker half-open (probe in flight)"

    def begin(self) -> None:
        self.in_flight += 1
        self._in_flight_gauge.inc()

    def end(self) -> None:
        self.in_flight -= 1
        self._in_flight_gauge.dec()

    def observe_latency(self, seconds: float) -> None:
        self.latency = (
            seconds if self.latency is None else LATENCY_ALPHA * seconds + (1 - LATENCY_ALPHA) * self.latency
        )

    def cool_down(self, seconds: float) -> None:
        self.cooling_until = max(self.cooling_until, time.monotonic() + seconds)
