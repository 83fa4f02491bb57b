"""Load-balancing strategies: pick one deployment out of the available ones.

Each strategy sees only the members that are in rotation right now (healthy, breaker
closed or probing, not rate limited) and returns one of them; it keeps whatever state it
needs between picks. Picks are O(number of deployments) and never await.

- ``round_robin``: in turn.
- ``least_in_flight``: the one with the fewest requests in flight (ties in turn).
- ``weighted``: smooth weighted round robin (as nginx does it): over any run of picks the
  shares match the weights, interleaved rather than in bursts.
- ``lowest_latency``: the lowest latency EWMA; deployments with no measurement yet are
  tried first, and every ``EXPLORE_EVERY``-th pick goes to the least recently used one so
  a deployment that got faster is noticed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, TypeVar

Strategy = Literal["round_robin", "least_in_flight", "weighted", "lowest_latency"]


class Candidate(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def latency(self) -> float | None: ...


C = TypeVar("C", bound=Candidate)


class Balancer(Protocol):
    def pick(self, candidates: Sequence[C]) -> C:
        """One of ``candidates`` (never empty)."""
        ...


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[C]) -> C:
        choice = candidates[self._next % len(candidates)]
        self._next += 1
        return choice


class LeastInFlight:
    def __init__(self) -> None:
        self._turn = 0

    def pick(self, candidates: Sequence[C]) -> C:
        low = min(c.in_flight for c in candidates)
        tied = [c for c in candidates if c.in_flight == low]
        choice = tied[self._turn % len(tied)]
        self._turn += 1
        return choice


class Weighted:
    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def pick(self, candidates: Sequence[C]) -> C:
        total = 0.0
        best: C | None = None
        best_score = 0.0
        for c in candidates:
            score = self._current.get(c.name, 0.0) + c.weight
            self._current[c.name] = score
            total += c.weight
            if best is None or score > best_score:
                best, best_score = c, score
        assert best is not None
        self._current[best.name] = best_score - total
        return best


class LowestLatency:
    EXPLORE_EVERY = 20

    def __init__(self) -> None:
        self._picks = 0
        self._last_pick: dict[str, int] = {}

    def pick(self, candidates: Sequence[C]) -> C:
        self._picks += 1
        unknown = [c for c in candidates if c.latency is None]
        if unknown:
            choice = min(unknown, key=lambda c: self._last_pick.get(c.name, -1))
        elif self._picks % self.EXPLORE_EVERY == 0:
            choice = min(candidates, key=lambda c: self._last_pick.get(c.name, -1))
        else:
            choice = min(candidates, key=lambda c: c.latency or 0.0)
        self._last_pick[choice.name] = self._picks
        return choice


def build_balancer(strategy: Strategy) -> Balancer:
    if strategy == "round_robin":
        return RoundRobin()
    if strategy == "least_in_flight":
        return LeastInFlight()
    if strategy == "weighted":
        return Weighted()
    if strategy == "lowest_latency":
        return LowestLatency()
    raise ValueError(
        f"unknown strategy {strategy!r}; use round_robin, least_in_flight, weighted or lowest_latency"
    )
