"""Rate limits per key, per tenant, per client IP and overall: requests and tokens per window.

The algorithms and their atomic updates are the ``limits`` library's, counted in the shared
state's storage (in-process, or Redis for every replica). Each check returns what OpenAI's
``x-ratelimit-*`` headers and ``Retry-After`` need.

A request is checked against every limit that applies; it is admitted only if all admit it. A
limit that admitted a request that another then refused keeps that hit (as in envoy's
ratelimit): refused requests still count against the limits they passed.

With the default sliding-window-counter strategy two paths avoid the library's per-call cost,
measured as what a request spends most on (bench/access_primitives.py; docs/BENCHMARKS.md):

- in Redis, every limit of a request is checked in one pipeline (one round trip, not two per
  limit): the same ``limits`` Lua scripts on the same keys, each limit's hit followed by a read of
  its window (``PipelinedSlidingWindow``);
- in process, ``LocalSlidingWindow`` counts the same algorithm in plain dicts (the library's
  in-memory storage costs ~15 us per call, 12 calls per request).

Both give the library's decisions and window states (tests/test_state_contract.py compares them).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from ragline.access.errors import RateLimited
from ragline.access.principal import Principal
from ragline.config import LimitsSettings
from ragline.state.base import SharedState, StateError
from ragline.state.redis import RedisState, ScriptCall

if TYPE_CHECKING:
    pass

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


class PipelinedSlidingWindow:
    """``limits``' sliding window counter in Redis, several limits in one pipeline.

    Runs the library's own scripts (``acquire_sliding_window.lua``, ``sliding_window.lua``) on the
    library's own keys, so its counts and the library's agree (tests/test_state_contract.py checks
    this against ``SlidingWindowCounterRateLimiter``); what it saves is the round trips: one for a
    whole request instead of two per limit. Window stats are computed as the library computes them.
    """

    def __init__(self, storage: RedisStorage, state: RedisState) -> None:
        bridge = storage.bridge
        assert isinstance(bridge, RedispyBridge)
        self._storage = storage
        self._bridge = bridge
        self._state = state  # its client shares the storage's connection pool
        self._script = state.client.register_script(_many_script(bridge))

    @staticmethod
    def supports(storage: Storage, strategy: str) -> bool:
        return (
            strategy == "sliding-window-counter"
            and type(storage) is RedisStorage
            and isinstance(storage.bridge, RedispyBridge)
        )

    def _keys(self, c: Check) -> list[str]:
        key = c.item.key_for(*c.identifiers)
        s, b = self._storage, self._bridge
        return [b.prefixed_key(s._previous_window_key(key)), b.prefixed_key(s._current_window_key(key))]

    def calls(self, pairs: Sequence[tuple[Check, int]]) -> list[ScriptCall]:
        """The script call that hits each check with its cost (0: no hit), each followed by a read
        of its window; for ``results`` once run (alone, or in a pipeline with other scripts)."""
        keys: list[str] = []
        args: list[int] = [len(pairs)]
        for c, cost in pairs:
            keys += self._keys(c)
            args += [c.item.amount, c.item.get_expiry(), cost]
        return [(self._script, keys, [",".join(map(str, args))])]

    @staticmethod
    def results(pairs: Sequence[tuple[Check, int]], replies: Sequence[Any]) -> list[tuple[bool, WindowState]]:
        """What ``calls``' reply (the first of ``replies``) says, per check."""
        raw = replies[0]
        values = (raw.decode() if isinstance(raw, bytes) else str(raw)).split(",")
        out: list[tuple[bool, WindowState]] = []
        for i, (c, _) in enumerate(pairs):
            ok, *window = values[5 * i : 5 * i + 5]
            out.append((ok == "1", _window_state(c, [v or None for v in window])))
        return out

    async def run(self, pairs: Sequence[tuple[Check, int]]) -> list[tuple[bool, WindowState]]:
        """Hit each check with its cost (0: no hit, only its window read), then read its window."""
        return self.results(pairs, await self._state.eval_many(self.calls(pairs)))

    async def eval_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run these scripts (``calls`` and others) in one pipeline, in the limiter's Redis."""
        return await self._state.eval_many(calls)


def _many_script(bridge: RedispyBridge) -> str:
    """One Lua script that runs the library's two sliding-window scripts (their own source, as local
    functions) for each of several limits: acquire (when the cost is above 0), then read the window.

    ARGV[1]: comma-separated, the number of limits, then per limit its amount, its period in seconds
    and the cost; KEYS: per limit its previous and current window keys. Returns one comma-separated
    string, per limit: admitted (1/0), previous count, previous TTL, current count, current TTL (TTLs
    in ms, as ``sliding_window.lua`` returns them; an empty field for a missing key). One argument
    and one string, not ~30 arguments and ~40 reply lines: redis-py's encoding and parsing of each
    cost more than the scripts themselves.
    """
    acquire = bytes(bridge.SCRIPT_ACQUIRE_SLIDING_WINDOW).decode()
    window = bytes(bridge.SCRIPT_SLIDING_WINDOW).decode()
    return (
        f"local function acquire(KEYS, ARGV)\n{acquire}\nend\n"
        f"local function window(KEYS, ARGV)\n{window}\nend\n"
        "local a = {}\n"
        "for v in string.gmatch(ARGV[1], '[^,]+') do a[#a + 1] = v end\n"
        "local out = {}\n"
        "for i = 0, tonumber(a[1]) - 1 do\n"
        "  local keys = {KEYS[2 * i + 1], KEYS[2 * i + 2]}\n"
        "  local limit, expiry, cost = a[3 * i + 2], a[3 * i + 3], a[3 * i + 4]\n"
        "  local ok = '1'\n"
        "  if tonumber(cost) > 0 and not acquire(keys, {limit, expiry, cost}) then ok = '0' end\n"
        "  local w = window(keys, {expiry})\n"
        "  for _, v in ipairs({ok, w[1] or '', w[2] or '', w[3] or '', w[4] or ''}) do\n"
        "    if type(v) == 'number' then v = string.format('%d', v) end\n"
        "    out[#out + 1] = v\n"
        "  end\n"
        "end\n"
        "return table.concat(out, ',')\n"
    )


class LocalSlidingWindow:
    """The sliding window counter of ``limits``' in-memory storage, without its per-call overhead.

    Windows are aligned to multiples of the limit's period; a hit is admitted when the previous
    window's count, weighted by the share of it still inside the sliding window, plus the current
    count plus the cost stays within the limit (``MemoryStorage.acquire_sliding_window_entry``).
    Synchronous, so a check and its count are one step on the event loop.
    """

    _SWEEP_EVERY = 10_000

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counters: dict[tuple[str, str, str, int, int], list[int]] = {}
        """key -> [window index, previous count, current count]"""
        self._ops = 0

    def hit(self, c: Check, cost: int) -> tuple[bool, WindowState]:
        """Count ``cost`` (0: only read) against ``c``; whether it was admitted, and the window after."""
        now = self._clock()
        expiry = c.item.get_expiry()
        limit = c.item.amount
        idx = int(now // expiry)
        key = (c.kind, c.scope, c.subject, limit, expiry)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = [idx, 0, 0]
            self._ops += 1
            if self._ops % self._SWEEP_EVERY == 0:
                self._sweep(now)
        elif counter[0] != idx:
            counter[1] = counter[2] if counter[0] == idx - 1 else 0
            counter[2] = 0
            counter[0] = idx
        _, prev, cur = counter
        prev_ttl = expiry - (now % expiry) if prev else 0.0
        weighted = prev * prev_ttl / expiry + cur
        ok = True
        if cost > 0:
            ok = cost <= limit and math.floor(weighted) + cost <= limit
            if ok:
                cur = counter[2] = cur + cost
                weighted += cost
        remaining = max(0, limit - math.floor(weighted))
        reset = 0.0
        if prev or cur:
            cur_ttl = expiry - (now % expiry) + expiry
            prev_reset = prev_ttl % (expiry / prev) if prev else math.inf
            cur_reset = cur_ttl % expiry if cur else math.inf
            reset = min(prev_reset, cur_reset)
        return ok, WindowState(c, limit, remaining, reset)

    def _sweep(self, now: float) -> None:
        """Drop counters whose windows are both over (bounded memory)."""
        stale = [k for k, (idx, _, _) in self._counters.items() if idx < int(now // k[4]) - 1]
        for k in stale:
            del self._counters[k]


_LOCAL: weakref.WeakKeyDictionary[SharedState, LocalSlidingWindow] = weakref.WeakKeyDictionary()


def _window_state(c: Check, window: Sequence[object] | None) -> WindowState:
    """What ``SlidingWindowCounterRateLimiter.get_window_stats`` makes of a window read."""
    w = list(window or (0, 0, 0, 0))
    prev_count, cur_count = int(w[0] or 0), int(w[2] or 0)  # type: ignore[call-overload]
    prev_ttl = max(0.0, float(w[1] or 0)) / 1000  # type: ignore[arg-type]
    cur_ttl = max(0.0, float(w[3] or 0)) / 1000  # type: ignore[arg-type]
    expiry = c.item.get_expiry()
    weighted = prev_count * prev_ttl / expiry + cur_count
    remaining = max(0, c.item.amount - math.floor(weighted))
    reset = 0.0
    if prev_count or cur_count:
        prev_reset = prev_ttl % (expiry / prev_count) if prev_count else math.inf
        cur_reset = cur_ttl % expiry if cur_count else math.inf
        reset = min(prev_reset, cur_reset)
    return WindowState(c, c.item.amount, remaining, reset)


class Limiter:
    """Checks requests against the configured limits and a principal's own."""

    def __init__(self, state: SharedState, settings: LimitsSettings | None = None) -> None:
        self.settings = settings or LimitsSettings()
        self._state = state
        storage = state.limits_storage
        self._strategy: RateLimiter = _STRATEGIES[self.settings.strategy](storage)
        self._concurrent = state.kind != "memory"  # network round trips overlap; in memory they cost
        self._pipelined: PipelinedSlidingWindow | None = None
        self._errors: tuple[type[Exception], ...] = state.errors if isinstance(state, RedisState) else ()
        strategy = self.settings.strategy
        self._local = (
            LocalSlidingWindow() if state.kind == "memory" and strategy == "sliding-window-counter" else None
        )
        if isinstance(state, RedisState) and PipelinedSlidingWindow.supports(storage, strategy):
            assert isinstance(storage, RedisStorage)
            self._pipelined = PipelinedSlidingWindow(storage, state)

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
        if self._local is not None:
            return self._local.hit(c, cost)
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

    @staticmethod
    def pairs(checks: Sequence[Check], tokens: int = 0) -> list[tuple[Check, int]]:
        """Each check with what a request costs it: 1 request, or ``tokens`` tokens."""
        return [(c, 1 if c.kind == "requests" else tokens) for c in checks]

    @property
    def pipelined(self) -> PipelinedSlidingWindow | None:
        """The Redis pipeline path, when that is how this limiter counts (for one pipeline with other
        scripts: ``pipelined.calls`` then ``decide``)."""
        return self._pipelined

    async def hit(self, checks: Sequence[Check], tokens: int = 0, *, headers: bool = True) -> RateDecision:
        pairs = self.pairs(checks, tokens)
        results: Sequence[tuple[bool, WindowState | None]]
        if self._local is not None:
            results = [self._local.hit(c, n) for c, n in pairs]
        elif self._pipelined is not None:
            results = await self._pipelined.run(pairs)
        else:
            try:
                if self._concurrent and len(checks) > 1:
                    results = await asyncio.gather(*(self._hit(c, n, headers) for c, n in pairs))
                else:
                    results = [await self._hit(c, n, headers) for c, n in pairs]
            except self._errors as e:
                raise StateError(f"rate limits cannot be counted: {type(e).__name__}") from e
        return self.decide(checks, results)

    @staticmethod
    def decide(checks: Sequence[Check], results: Sequence[tuple[bool, WindowState | None]]) -> RateDecision:
        refused = [s for ok, s in results if not ok and s is not None]
        return RateDecision(
            allowed=len(refused) == 0,
            states=tuple(s for _, s in results if s is not None),
            refused_by=max(refused, key=lambda s: s.reset_s) if refused else None,
            token_checks=tuple(c for c in checks if c.kind == "tokens"),
        )

    async def settle_tokens(self, settled: Sequence[tuple[RateDecision, int]]) -> None:
        """Add finished requests' completion tokens to their tokens limits (off the request path; in
        Redis one pipeline for all of them). A window can only be filled to its limit: tokens past it
        are not carried over."""
        pairs = [(c, n) for d, n in settled if n > 0 for c in d.token_checks]
        if not pairs:
            return
        if self._local is not None:
            for c, n in pairs:
                ok, state = self._local.hit(c, n)
                if not ok and state.remaining > 0:
                    self._local.hit(c, state.remaining)
            return
        if self._pipelined is not None:
            # all of it at once; where a window cannot take all of it, what it still has room for
            first = await self._pipelined.run(pairs)
            rest = [(s.check, s.remaining) for ok, s in first if not ok and s.remaining > 0]
            if rest:
                await self._pipelined.run(rest)
            return
        for c, n in pairs:
            stats = await self._strategy.get_window_stats(c.item, *c.identifiers)
            if min(n, stats.remaining) > 0:
                await self._strategy.hit(c.item, *c.identifiers, cost=min(n, stats.remaining))

    async def hit_once(self, scope: str, subject: str, rate: str) -> WindowState | None:
        """Count one event against ``rate`` (e.g. a failed authentication); the window state when over."""
        c = Check(scope, subject, "requests", parse_rate(rate))
        ok, state = await self._hit(c, 1, stats=False)
        return None if ok else state
