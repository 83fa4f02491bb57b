"""The shared-state seam and the rate limiter over it: in-process and a real Redis server.

Redis comes from Debian (installed with apt-get when missing, tests/services.py), started once per
session on loopback; tests keep apart by key prefix.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ragline.access.errors import RateLimited
from ragline.access.principal import Principal
from ragline.access.ratelimit import Limiter, format_reset
from ragline.config import LimitsSettings
from ragline.state import InProcessState, SharedState, build_state
from ragline.state.base import StateError
from ragline.state.redis import RedisState

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).resolve().parent
STRATEGIES = ["moving-window", "sliding-window-counter", "fixed-window"]


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[SharedState]:
    s: SharedState
    if request.param == "memory":
        s = InProcessState()
    else:
        s = RedisState(request.getfixturevalue("redis_url"), f"t{uuid.uuid4().hex[:12]}")
    await s.open()
    yield s
    await s.close()


def _limiter(state: SharedState, strategy: str = "moving-window", **limits: dict[str, str]) -> Limiter:
    return Limiter(state, LimitsSettings(strategy=strategy, **limits))  # type: ignore[arg-type]


def _key(key_id: str = "k1", tenant: str = "acme", **kw: str) -> Principal:
    return Principal(key_id, tenant, "app", **kw)  # type: ignore[arg-type]


async def test_is_shared_state(state: SharedState) -> None:
    assert isinstance(state, SharedState) and state.kind in ("memory", "redis")


async def test_publish_reaches_every_subscriber_and_only_while_subscribed(state: SharedState) -> None:
    async with state.subscribe("access") as a, state.subscribe("access") as b, state.subscribe("other") as c:
        await state.publish("access", "key:k1")
        assert await asyncio.wait_for(anext(a), 1) == "key:k1"
        assert await asyncio.wait_for(anext(b), 1) == "key:k1"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(c), 0.2)
    await state.publish("access", "nobody listens")  # no subscriber: nothing happens, nothing fails


async def test_values_with_ttl(state: SharedState) -> None:
    await state.set("a", b"1")
    await state.set("b", b"2", ttl_s=0.1)
    assert await state.get("a") == b"1" and await state.get("b") == b"2"
    await asyncio.sleep(0.25)
    assert await state.get("b") is None
    await state.delete("a")
    assert await state.get("a") is None and await state.get("never") is None


async def test_set_if_absent_is_won_by_exactly_one_of_many_and_expires(state: SharedState) -> None:
    won = await asyncio.gather(*(state.set_if_absent("claim", str(i).encode(), 0.3) for i in range(20)))
    assert won.count(True) == 1
    assert await state.get("claim") == str(won.index(True)).encode()  # the winner's value
    assert not await state.set_if_absent("claim", b"late", 0.3)
    await asyncio.sleep(0.45)  # expired: free to claim again
    assert await state.set_if_absent("claim", b"again", 0.3)
    await state.delete("claim")
    assert await state.set_if_absent("claim", b"after delete", 5)
    await state.set("plain", b"x")  # a value set without a TTL counts as present too
    assert not await state.set_if_absent("plain", b"y", 5) and await state.get("plain") == b"x"


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_200_concurrent_hits_on_a_limit_of_60_admit_exactly_60(
    state: SharedState, strategy: str
) -> None:
    limiter = _limiter(state, strategy, per_key={"requests": "60/minute"})
    p = _key()
    decisions = await asyncio.gather(*(limiter.admit(p, None) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 60
    refused = [d for d in decisions if not d.allowed]
    assert all(d.retry_after_s is not None and 1 <= d.retry_after_s <= 60 for d in refused)
    other = await limiter.admit(_key("k2"), None)  # another key has its own window
    assert other.allowed


def test_two_processes_sharing_redis_admit_exactly_60_of_200(redis_url: str) -> None:
    """Two processes fire 100 concurrent hits each at one 60/minute limit in Redis (the default
    strategy; the others run the same kind of atomic script, tested concurrently above)."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    procs: dict[str, list[subprocess.Popen[str]]] = {}
    for strategy in ("sliding-window-counter",):
        args = [redis_url, f"{prefix}-{strategy}", strategy, "60/minute", "100"]
        cmd = [sys.executable, str(HERE / "state_hits.py"), *args]
        procs[strategy] = [
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)
        ]
    everyone = [p for group in procs.values() for p in group]
    for p in everyone:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in everyone:  # go
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for strategy, group in procs.items():
        admitted = [int(p.communicate(timeout=60)[0].strip()) for p in group]
        assert sum(admitted) == 60, (strategy, admitted)
        assert all(a > 0 for a in admitted), (strategy, admitted)  # both really raced for the window


async def test_headers_follow_openai_and_the_tightest_limit(state: SharedState) -> None:
    limiter = _limiter(
        state,
        per_key={"requests": "5/minute", "tokens": "1000/minute"},
        overall={"requests": "100/minute"},
    )
    p = _key()
    for _ in range(3):
        d = await limiter.admit(p, "10.0.0.1", prompt_tokens=100)
    h = d.headers()
    assert h["x-ratelimit-limit-requests"] == "5"  # the key's: tighter than the overall 100
    assert h["x-ratelimit-remaining-requests"] == "2"
    assert h["x-ratelimit-limit-tokens"] == "1000"
    assert h["x-ratelimit-remaining-tokens"] == "700"
    assert h["x-ratelimit-reset-requests"].endswith("s") and "retry-after" not in h
    await limiter.admit(p, None)
    await limiter.admit(p, None)
    refused = await limiter.admit(p, None)
    assert not refused.allowed and refused.refused_by is not None
    assert refused.refused_by.check.scope == "key"
    assert refused.headers()["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused.headers()["retry-after"]) <= 60
    with pytest.raises(RateLimited) as e:
        refused.raise_if_refused()
    assert e.value.status_code == 429 and e.value.headers["retry-after"] == refused.headers()["retry-after"]
    assert "5 requests per minute" in str(e.value)


async def test_tokens_are_counted_before_and_settled_after(state: SharedState) -> None:
    limiter = _limiter(state, per_tenant={"tokens": "1000/hour"})
    p = _key()
    first = await limiter.admit(p, None, prompt_tokens=600)
    assert first.allowed
    assert not (await limiter.admit(p, None, prompt_tokens=600)).allowed  # 1200 > 1000
    await limiter.settle_tokens([(first, 300)])
    after = await limiter.admit(p, None, prompt_tokens=50)
    assert after.allowed and after.headers()["x-ratelimit-remaining-tokens"] == "50"  # 600 + 300 + 50
    await limiter.settle_tokens([(after, 10_000)])  # fills the window, never past it
    last = await limiter.admit(p, None, prompt_tokens=1)
    assert not last.allowed and last.headers()["x-ratelimit-remaining-tokens"] == "0"


async def test_every_scope_and_the_principals_own_limits(state: SharedState) -> None:
    limiter = _limiter(
        state,
        per_key={"requests": "100/minute"},
        per_tenant={"requests": "100/minute"},
        per_ip={"requests": "2/minute"},
        overall={"requests": "4/minute"},
    )
    a = _key("a", "t1", key_rate_requests="1/minute")  # the key's own limit wins over per_key
    assert (await limiter.admit(a, "1.1.1.1")).allowed
    d = await limiter.admit(a, "2.2.2.2")
    assert not d.allowed and d.refused_by is not None and d.refused_by.check.scope == "key"
    b = _key("b", "t2")
    assert (await limiter.admit(b, "3.3.3.3")).allowed
    d = await limiter.admit(b, "3.3.3.3")  # "b"'s 2nd: the ip's 2/minute still admits
    assert d.allowed
    d = await limiter.admit(b, "3.3.3.3")
    assert not d.allowed and d.refused_by is not None and d.refused_by.check.scope in ("ip", "overall")
    d = await limiter.admit(_key("c", "t3"), "4.4.4.4")
    assert not d.allowed and d.refused_by is not None and d.refused_by.check.scope == "overall"
    t = _key("d", "t4", tenant_rate_requests="1/hour")
    limiter2 = _limiter(state, overall={})
    assert (await limiter2.admit(t, None)).allowed
    assert not (await limiter2.admit(_key("e", "t4", tenant_rate_requests="1/hour"), None)).allowed


async def test_without_headers_the_decision_is_the_same(state: SharedState) -> None:
    limiter = _limiter(state, per_key={"requests": "3/minute"})
    decisions = [await limiter.admit(_key(), None, headers=False) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[0].headers() == {}
    assert (
        decisions[3].retry_after_s is not None
        and decisions[3].headers()["x-ratelimit-remaining-requests"] == "0"
    )


async def test_no_limit_configured_costs_nothing(state: SharedState) -> None:
    limiter = _limiter(state)
    d = await limiter.admit(_key(), "1.2.3.4", prompt_tokens=10**9)
    assert d.allowed and d.headers() == {} and d.states == ()


async def test_hit_once_counts_events(state: SharedState) -> None:
    limiter = _limiter(state)
    for _ in range(3):
        assert await limiter.hit_once("auth-failures", "9.9.9.9", "3/minute") is None
    over = await limiter.hit_once("auth-failures", "9.9.9.9", "3/minute")
    assert over is not None and over.remaining == 0 and 0 < over.reset_s <= 60


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0201, "21ms"), (1.0, "1s"), (6 * 60, "6m0s"), (61.5, "1m1.5s"), (3600 + 120 + 3, "1h2m3s")],
)
def test_reset_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


async def test_unreachable_redis_is_a_state_error_without_the_password() -> None:
    s = RedisState("redis://:hunter2-secret@127.0.0.1:1/0", timeout_s=1)
    with pytest.raises(StateError) as e:
        await s.open()
    assert "hunter2-secret" not in str(e.value)


def test_factory_picks_the_backend_from_the_url() -> None:
    from ragline.config import load_settings

    assert isinstance(build_state(load_settings()), InProcessState)
    r = build_state(load_settings(state={"url": "redis://127.0.0.1:6379/0", "key_prefix": "x"}))
    assert isinstance(r, RedisState) and r.prefix == "x"
    with pytest.raises(StateError, match="redis://"):
        RedisState("http://127.0.0.1:6379")


async def test_pipelined_sliding_window_agrees_with_the_library(redis_url: str) -> None:
    """In Redis the default strategy checks every limit of a request in one pipeline; its decisions
    and window states are the ones ``limits``' own SlidingWindowCounterRateLimiter gives, on the
    same keys (each limiter's hits are seen by the other)."""
    s = RedisState(redis_url, f"t{uuid.uuid4().hex[:12]}")
    await s.open()
    try:
        settings = LimitsSettings(per_key={"requests": "5/minute", "tokens": "100/minute"})
        piped = Limiter(s, settings)
        assert piped._pipelined is not None
        plain = Limiter(s, settings)
        plain._pipelined = None  # the library's strategy, one call per step
        p = _key()
        for i in range(8):
            d = await (piped if i % 2 else plain).admit(p, None, prompt_tokens=20)
            assert d.allowed == (i < 5)  # 5 requests, 5 x 20 tokens
            for state in d.states:  # what the library itself reads from the same keys now
                c = state.check
                stats = await plain._strategy.get_window_stats(c.item, *c.identifiers)
                assert state.remaining == stats.remaining
                # the library's reset is a TTL modulo the window: 0 and 60 s are the same point
                off = abs(state.reset_s - (stats.reset_time - time.time())) % c.item.get_expiry()
                assert min(off, c.item.get_expiry() - off) < 0.5
            assert d.headers()["x-ratelimit-remaining-requests"] == str(max(0, 4 - i))
    finally:
        await s.close()


async def test_local_sliding_window_agrees_with_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, the default strategy counts in plain dicts; across window boundaries it admits
    and reports exactly what ``limits``' MemoryStorage with its SlidingWindowCounterRateLimiter does."""
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

    from ragline.access.ratelimit import Check, LocalSlidingWindow, parse_rate

    now = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    local = LocalSlidingWindow(clock=lambda: now[0])
    library = SlidingWindowCounterRateLimiter(MemoryStorage())
    c = Check("key", "k1", "tokens", parse_rate("10/minute"))
    seen = set()
    for step in range(60):
        now[0] += 3.7 if step % 3 else 11.0
        cost = (step * 7) % 5  # 0 reads only
        ok, state = local.hit(c, cost)
        want_ok = await library.hit(c.item, *c.identifiers, cost=cost) if cost else True
        stats = await library.get_window_stats(c.item, *c.identifiers)
        assert (ok, state.remaining) == (want_ok, stats.remaining), step
        assert state.reset_s == pytest.approx(max(0.0, stats.reset_time - now[0]), abs=1e-6), step
        seen.add((ok, cost > 0))
    assert seen == {(True, True), (False, True), (True, False)}  # admitted, refused, read-only


async def test_scripts_are_loaded_again_after_redis_forgets_them(redis_url: str) -> None:
    """The limiter's pipelines send EVALSHA only; after SCRIPT FLUSH (or a Redis restart) the scripts
    are loaded again and each hit still counts once."""
    s = RedisState(redis_url, f"t{uuid.uuid4().hex[:12]}")
    await s.open()
    try:
        lim = Limiter(s, LimitsSettings(per_key={"requests": "5/minute"}))
        p = _key()
        assert (await lim.admit(p, None)).headers()["x-ratelimit-remaining-requests"] == "4"
        await s.client.script_flush()
        assert (await lim.admit(p, None)).headers()["x-ratelimit-remaining-requests"] == "3"
        await s.client.script_flush()
        assert (await lim.admit(p, None)).headers()["x-ratelimit-remaining-requests"] == "2"
    finally:
        await s.close()
