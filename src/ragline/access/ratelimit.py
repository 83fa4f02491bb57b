"""Rate limits per key, per tenant, per client IP and overall: requests and tokens per window.

The algorithms and their atomic updates are the ``limits`` library's, counted in the shared
state's storage (in-process, or Redis for every replica). Each check returns what OpenAI's
``x-ratelimit-*`` headers and ``Retry-After`` need.

A request is checked against every limit that applies; it is admitted only if all admit it. A
limit that admitted a request that another then refused keeps that hit (as in envoy's
ratelimit): refused requests still count against the limits they passed.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from ragline.access.errors import RateLimited
from ragline.access.principal import Principal
from ragline.config import LimitsSettings
from ragline.state.base import SharedState

Kind = Literal["requests", "tokens"]

_STRATEGIES: dict[str, Callable[[Storage], RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}


@functools.lru_cache(maxsize=4096)
def parse_rate(text: str) -> RateLimitItem:
    """``60/minute``, ``1000 per hour``... as a ``limits`` item (ValueError when it is not one)."""
    return parse(text)


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds * 1000) / 1000
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


@dataclass(frozen=True, slots=True)
class Check:
    """One limit that applies to a request."""

    scope: str
    """``key``, ``tenant``, ``ip`` or ``overall``."""
    subject: str
    kind: Kind
    item: RateLimitItem

    @property
    def identifiers(self) -> tuple[str, str, str]:
        return (self.kind, self.scope, self.subject)


@dataclass(frozen=True, slots=True)
class WindowState:
    """Where one limit stands after a check."""

    check: Check
    limit: int
    remaining: int
    reset_s: float
    """Seconds until the window frees up again."""


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    states: tuple[WindowState, ...] = ()
    refused_by: WindowState | None = None
    token_checks: tuple[Check, ...] = field(default=())
    """The tokens limits that ``settle_tokens`` adds completion tokens to."""

    def tightest(self, kind: Kind) -> WindowState | None:
        found = [s for s in self.states if s.check.kind == kind]
        return min(found, key=lambda s: (s.remaining, s.limit)) if found else None

    @property
    def retry_after_s(self) -> int | None:
        return max(1, math.ceil(self.refused_by.reset_s)) if self.refused_by else None

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` from the tightest limits
        (and ``retry-after`` when refused); empty when no limit applies."""
        out: dict[str, str] = {}
        kinds: tuple[Kind, Kind] = ("requests", "tokens")
        for kind in kinds:
            s = self.tightest(kind)
            if s is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(s.limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(s.remaining)
                out[f"x-ratelimit-reset-{kind}"] = format_reset(s.reset_s)
        if self.retry_after_s is not None:
            out["retry-after"] = str(self.retry_after_s)
        return out

    def raise_if_refused(self) -> None:
        if not self.allowed and self.refused_by is not None:
            c = self.refused_by.check
            what = "the overall" if c.scope == "overall" else f"this {c.scope}'s"
            raise RateLimited(
                f"Rate limit reached: {what} limit of {c.item.amount} {c.kind} per "
                f"{_per(c.item)}. Retry after {self.retry_after_s} s.",
                retry_after_s=self.retry_after_s or 1,
                headers=self.headers(),
            )


def _per(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


class Limiter:
    """Checks requests against the configured limits and a principal's own."""

    def __init__(self, state: SharedState, settings: LimitsSettings | None = None) -> None:
        self.settings = settings or LimitsSettings()
        self._state = state
        self._strategy: RateLimiter = _STRATEGIES[self.settings.strategy](state.limits_storage)
        self._concurrent = state.kind != "memory"  # network round trips overlap; in memory they cost

    def checks(
        self, principal: Principal | None, ip: str | None, *, requests: bool = True, tokens: bool = True
    ) -> list[Check]:
        """The limits that apply: the key's and tenant's own (else the configured ones), the IP's,
        overall; ``requests`` / ``tokens`` False leaves that kind out."""
        s = self.settings
        out: list[Check] = []

        def add(scope: str, subject: str, reqs: str | None, toks: str | None) -> None:
            if reqs and requests:
                out.append(Check(scope, subject, "requests", parse_rate(reqs)))
            if toks and tokens:
                out.append(Check(scope, subject, "tokens", parse_rate(toks)))

        if principal is not None:
            add(
                "key",
                principal.key_id,
                principal.key_rate_requests or s.per_key.requests,
                principal.key_rate_tokens or s.per_key.tokens,
            )
            add(
                "tenant",
                principal.tenant,
                principal.tenant_rate_requests or s.per_tenant.requests,
                principal.tenant_rate_tokens or s.per_tenant.tokens,
            )
        if ip:
            add("ip", ip, s.per_ip.requests, s.per_ip.tokens)
        add("overall", "all", s.overall.requests, s.overall.tokens)
        return out

    async def _hit(self, c: Check, cost: int, stats: bool = True) -> tuple[bool, WindowState | None]:
        ok = await self._strategy.hit(c.item, *c.identifiers, cost=cost) if cost > 0 else True
        if ok and not stats:
            return ok, None
        window = await self._strategy.get_window_stats(c.item, *c.identifiers)
        reset = max(0.0, window.reset_time - time.time())
        return ok, WindowState(c, c.item.amount, max(0, window.remaining), reset)

    async def admit(
        self, principal: Principal | None, ip: str | None, prompt_tokens: int = 0, *, headers: bool = True
    ) -> RateDecision:
        """Count one request (and its prompt tokens) against every limit that applies.

        ``headers=False`` skips reading each window's state after an admitted hit (one Redis round
        trip per limit instead of two); the decision is the same, and a refusal still carries its
        ``Retry-After``, but admitted requests get no ``x-ratelimit-*`` headers.
        """
        checks = self.checks(principal, ip)
        if not checks:
            return RateDecision(True)
        return await self.hit(checks, prompt_tokens, headers=headers)

    async def hit(self, checks: Sequence[Check], tokens: int = 0, *, headers: bool = True) -> RateDecision:
        costs = [1 if c.kind == "requests" else tokens for c in checks]
        pairs = zip(checks, costs, strict=True)
        if self._concurrent and len(checks) > 1:
            results = await asyncio.gather(*(self._hit(c, n, headers) for c, n in pairs))
        else:
            results = [await self._hit(c, n, headers) for c, n in pairs]
        refused = [s for ok, s in results if not ok and s is not None]
        return RateDecision(
            allowed=len(refused) == 0,
            states=tuple(s for _, s in results if s is not None),
            refused_by=max(refused, key=lambda s: s.reset_s) if refused else None,
            token_checks=tuple(c for c in checks if c.kind == "tokens"),
        )

    async def settle_tokens(self, decision: RateDecision, completion_tokens: int) -> None:
        """Add a finished request's completion tokens to its tokens limits (off the request path).

        A window can only be filled to its limit: tokens past it are not carried over.
        """
        for c in decision.token_checks:
            stats = await self._strategy.get_window_stats(c.item, *c.identifiers)
            n = min(completion_tokens, stats.remaining)
            if n > 0:
                await self._strategy.hit(c.item, *c.identifiers, cost=n)

    async def hit_once(self, scope: str, subject: str, rate: str) -> WindowState | None:
        """Count one event against ``rate`` (e.g. a failed authentication); the window state when over."""
        c = Check(scope, subject, "requests", parse_rate(rate))
        ok, state = await self._hit(c, 1, stats=False)
        return None if ok else state
