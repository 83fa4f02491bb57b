"""Breakers and passive health shared across replicas (gateway/fleet.py), in one process.

Two gateway routers stand for two replicas: each has its own shared state, either its own
connection to one real Redis (tests/services.py) or the one in-process state they share. They call
the fault-injecting upstream (tests/fault_upstream.py, a real process on loopback) whose request
counts prove what reached the failing deployment. ``test_gateway_replicas.py`` does the same with
two real `ragline serve` processes.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from ragline.config import Settings
from ragline.gateway import Router, build_router
from ragline.gateway.breaker import BreakerEvent, BreakerState, CircuitBreaker
from ragline.gateway.errors import NoDeploymentAvailable
from ragline.state import InProcessState, SharedState
from ragline.state.redis import RedisState
from services import debian_binary
from test_access_http import upstream  # noqa: F401  (a module fixture)

pytestmark = pytest.mark.timeout(120)
MSG = [{"role": "user", "content": "Say hi."}]
COOLDOWN = 1.0


def gateway_settings(base: str, inst: str, *, probed: bool = False, consecutive: int = 2) -> Settings:
    """Model ``m``: one deployment ``flaky`` (instance ``inst``), falling back to model ``fb``."""
    return Settings.model_validate(
        {
            "gateway": {
                "deployments": [
                    {
                        "name": "flaky",
                        "base_url": f"{base}/{inst}/v1",
                        "model": "x",
                        "health_check": probed,
                    },
                    {
                        "name": "backup",
                        "base_url": f"{base}/{inst}-fb/v1",
                        "model": "x",
                        "health_check": False,
                    },
                ],
                "models": {
                    "m": {"deployments": ["flaky"], "fallbacks": ["fb"]},
                    "fb": {"deployments": ["backup"]},
                },
                "retry": {"max_attempts": 1},
                "breaker": {"consecutive_failures": consecutive, "cooldown_s": COOLDOWN},
                # passive health only (no active probe would bring it back during the test)
                "health": {"interval_s": 3600 if probed else 0, "passive_failures": 2},
            }
        }
    )


def _no_local() -> Any:
    raise AssertionError("no local model here")


def faults(base: str, inst: str, *faults: dict[str, Any]) -> None:
    httpx.post(base + "/admin/faults", json={"instance": inst, "faults": list(faults)}).raise_for_status()


def calls(base: str, inst: str) -> int:
    return int(httpx.get(base + "/admin/stats").json().get(inst, {}).get("requests", 0))


def member_state(router: Router) -> BreakerState:
    """The breaker of deployment ``flaky`` in this router."""
    return router._groups["m"].members[0].breaker.state


async def answer(router: Router) -> str:
    """Who answered (the instance name in 'hello from <instance>')."""
    r = await router.complete({"model": "m", "messages": MSG, "max_tokens": 3})
    return str(r["choices"][0]["message"]["content"]).removeprefix("hello from ")


async def until(check: Callable[[], bool], within: float) -> float:
    """Seconds until ``check()`` held; fails past ``within``."""
    t = time.monotonic()
    while not check():
        assert time.monotonic() - t < within, f"not within {within} s"
        await asyncio.sleep(0.005)
    return time.monotonic() - t


def test_breaker_events_are_only_this_processs_own_transitions() -> None:
    now = [100.0]
    changes: list[BreakerState] = []
    events: list[BreakerEvent] = []
    b = CircuitBreaker(consecutive_failures=2, cooldown=10.0, clock=lambda: now[0], on_change=changes.append)
    b.on_event = events.append
    b.open_for(3.0)  # another replica tripped: open for what is left of its cooldown
    assert b.state is BreakerState.OPEN and b.retry_in() == 3.0 and not b.available()
    now[0] += 3.0
    assert b.acquire() and b.probing  # half-open: this caller holds the probe
    b.release()  # it ended without an outcome
    assert events == [BreakerEvent.PROBE_RELEASED] and not b.probing
    b.close()  # another replica's probe succeeded
    assert b.state is BreakerState.CLOSED and events == [BreakerEvent.PROBE_RELEASED]
    b.release()  # on a closed breaker: nothing to tell
    assert b.acquire() and not b.probing
    b.record_failure()
    b.record_failure()
    assert events[-1] is BreakerEvent.TRIPPED and b.retry_in() == 10.0
    now[0] += 10.0
    assert b.acquire()
    b.record_success()
    assert events[-1] is BreakerEvent.CLOSED and len(events) == 3
    b.open_for(99.0)  # never longer than this replica's own cooldown
    assert b.retry_in() == 10.0
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
        BreakerState.OPEN,
    ]  # the gauge hears every change, whoever caused it


@asynccontextmanager
async def two_routers(kind: str, settings: Settings, redis_url: str | None) -> AsyncIterator[list[Router]]:
    states: list[SharedState]
    if kind == "memory":
        shared = InProcessState()
        states = [shared, shared]
    else:
        assert redis_url is not None
        prefix = f"t{uuid.uuid4().hex[:8]}"
        states = [RedisState(redis_url, prefix), RedisState(redis_url, prefix)]
    for s in dict.fromkeys(states):
        await s.open()
    routers = [build_router(settings, _no_local, state=s) for s in states]
    for r in routers:
        await r.start()
    try:
        yield routers
    finally:
        for r in routers:
            await r.aclose()
        for s in dict.fromkeys(states):
            await s.close()


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_one_replica_trips_every_replica_fails_fast_one_probe_closes_all(
    kind: str,
    upstream: str,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    inst = f"trip-{kind}"
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    async with two_routers(kind, gateway_settings(upstream, inst), redis_url) as (a, b):
        faults(upstream, inst, {"mode": "status", "status": 500, "count": -1})
        assert [await answer(a), await answer(a)] == [f"{inst}-fb"] * 2  # failed over to the fallback
        assert member_state(a) is BreakerState.OPEN and calls(upstream, inst) == 2
        took = await until(lambda: member_state(b) is BreakerState.OPEN, within=1.0)
        print(f"\n{kind}: replica B's breaker opened {took * 1000:.1f} ms after A's")
        # B fails fast: its requests go to the fallback without one reaching the open deployment
        assert await asyncio.gather(*(answer(b) for _ in range(20))) == [f"{inst}-fb"] * 20
        assert calls(upstream, inst) == 2

        # after the cooldown: 40 requests at once on both replicas; the probe is slow, so whoever
        # does not hold it must fall back; exactly one request reaches the deployment
        await asyncio.sleep(COOLDOWN + 0.05)
        faults(upstream, inst, {"mode": "ok", "delay": 0.3})
        who = await asyncio.gather(*(answer(r) for _ in range(20) for r in (a, b)))
        assert calls(upstream, inst) == 3, "more than one probe across the replicas"
        assert who.count(inst) == 1 and who.count(f"{inst}-fb") == 39
        # the probe succeeded: both close (one of them from the other's message)
        await until(lambda: member_state(a) is member_state(b) is BreakerState.CLOSED, within=1.0)
        assert [await answer(a), await answer(b)] == [inst, inst]


class CountingState(InProcessState):
    """The in-process state, counting every call the gateway makes on it (fault injection's kin)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    async def publish(self, channel: str, message: str) -> None:
        self.ops.append("publish")
        await super().publish(channel, message)

    async def get(self, key: str) -> bytes | None:
        self.ops.append("get")
        return await super().get(key)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self.ops.append("set")
        await super().set(key, value, ttl_s)

    async def set_if_absent(self, key: str, value: bytes, ttl_s: float) -> bool:
        self.ops.append("set_if_absent")
        return await super().set_if_absent(key, value, ttl_s)

    async def delete(self, key: str) -> None:
        self.ops.append("delete")
        await super().delete(key)


async def test_closed_and_open_breakers_cost_no_shared_state_call(
    upstream: str,  # noqa: F811
) -> None:
    """Only transitions touch the shared state: not a request on a closed breaker, nor one refused
    by an open breaker; the probe's claim is the one call a half-open breaker makes."""
    inst = "quiet"
    state = CountingState()
    router = build_router(gateway_settings(upstream, inst), _no_local, state=state)
    await router.start()
    try:
        faults(upstream, inst)
        state.ops.clear()  # start-up read the open breakers
        assert await asyncio.gather(*(answer(router) for _ in range(50))) == [inst] * 50
        await asyncio.sleep(0.05)
        assert state.ops == []  # closed: nothing
        faults(upstream, inst, {"mode": "status", "status": 500, "count": -1})
        await answer(router)
        await answer(router)
        await asyncio.sleep(0.05)
        assert state.ops == ["publish", "set"]  # the trip: the message and the key
        state.ops.clear()
        assert await asyncio.gather(*(answer(router) for _ in range(50))) == [f"{inst}-fb"] * 50
        await asyncio.sleep(0.05)
        assert state.ops == []  # open: refused locally
        await asyncio.sleep(COOLDOWN)
        faults(upstream, inst)
        assert await answer(router) == inst
        await asyncio.sleep(0.05)
        # the claim, then the close: the message, the key and the claim deleted
        assert state.ops == ["set_if_absent", "publish", "delete", "delete"]
    finally:
        await router.aclose()


async def test_a_failed_probe_opens_every_replica_for_another_cooldown(
    kind: str,
    upstream: str,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    inst = f"reprobe-{kind}"
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    async with two_routers(kind, gateway_settings(upstream, inst), redis_url) as (a, b):
        faults(upstream, inst, {"mode": "status", "status": 503, "count": -1})
        await answer(b)
        await answer(b)
        await until(lambda: member_state(a) is BreakerState.OPEN, within=1.0)
        await asyncio.sleep(COOLDOWN + 0.05)
        assert await answer(a) == f"{inst}-fb"  # A sent the probe; it failed
        assert calls(upstream, inst) == 3
        # B learns it at once: open for a full cooldown again, not half-open
        await until(lambda: member_state(b) is BreakerState.OPEN, within=1.0)
        assert b._groups["m"].members[0].breaker.retry_in() > COOLDOWN / 2
        assert await asyncio.gather(*(answer(r) for r in (a, b) for _ in range(5))) == [f"{inst}-fb"] * 10
        assert calls(upstream, inst) == 3


async def test_a_replica_that_starts_late_reads_the_open_breaker(
    upstream: str,  # noqa: F811
    redis_url: str,
) -> None:
    inst = "late"
    settings = gateway_settings(upstream, inst)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    sa, sb = RedisState(redis_url, prefix), RedisState(redis_url, prefix)
    await sa.open()
    await sb.open()
    a = build_router(settings, _no_local, state=sa)
    await a.start()
    try:
        faults(upstream, inst, {"mode": "status", "status": 500, "count": -1})
        await answer(a)
        await answer(a)
        await asyncio.sleep(0.1)  # the key is written after the message
        b = build_router(settings, _no_local, state=sb)  # a replica started after the trip
        await b.start()
        try:
            assert member_state(b) is BreakerState.OPEN
            assert await answer(b) == f"{inst}-fb" and calls(upstream, inst) == 2
        finally:
            await b.aclose()
    finally:
        await a.aclose()
        await sa.close()
        await sb.close()


async def test_passive_health_is_shared(
    kind: str,
    upstream: str,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    """Connect failures on one replica take a probed deployment out of rotation on both."""
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    # port 9: refused; health, not the breaker, takes it out
    settings = gateway_settings("http://127.0.0.1:9", "nothing", probed=True, consecutive=100)
    async with two_routers(kind, settings, redis_url) as (a, b):
        fa, fb = (r._groups["m"].members[0] for r in (a, b))
        for _ in range(2):
            with pytest.raises(NoDeploymentAvailable):  # the fallback is on the dead port too
                await a.complete({"model": "m", "messages": MSG})
        assert not fa.health.healthy and fa.breaker.state is BreakerState.CLOSED
        await until(lambda: not fb.health.healthy, within=1.0)
        with pytest.raises(NoDeploymentAvailable) as e:
            await b.complete({"model": "m", "messages": MSG})
        assert "failing health checks" in str(e.value.reasons)
        assert b.fleet is not None and b.fleet.applied >= 1


async def test_redis_outage_leaves_breakers_local_logs_once_and_recovers(
    upstream: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    tmp_path: Any,
) -> None:
    """Redis goes away: the gateway keeps serving with local breakers (a failing probe claim counts
    as won); one warning says so; when Redis is back, sharing resumes."""
    binary = debian_binary("redis-server", "redis-server")
    port = _free_port()
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    args += ["--dir", str(tmp_path)]
    redis = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    inst = "outage"
    try:
        await _wait_redis(url)
        caplog.set_level(logging.WARNING, logger="ragline.gateway")
        async with two_routers("redis", gateway_settings(upstream, inst), url) as (a, b):
            redis.terminate()
            redis.wait(10)
            faults(upstream, inst, {"mode": "status", "status": 500, "count": -1})
            assert [await answer(a), await answer(a)] == [f"{inst}-fb"] * 2  # served, Redis or not
            assert member_state(a) is BreakerState.OPEN
            await asyncio.sleep(0.3)
            assert member_state(b) is BreakerState.CLOSED  # nothing reached it: local-only
            await asyncio.sleep(COOLDOWN)
            faults(upstream, inst)  # healthy again
            assert await answer(a) == inst  # the probe claim failed: counted as won, A probed
            assert member_state(a) is BreakerState.CLOSED
            assert a.fleet is not None and not a.fleet.sharing
            local_only = [r for r in caplog.records if "local-only" in r.getMessage()]
            assert len({r.getMessage() for r in local_only}) <= 2 and len(local_only) <= 2  # once per router

            redis = subprocess.Popen(args, stdout=subprocess.DEVNULL)  # back, same port
            await _wait_redis(url)
            await until(lambda: a.fleet is not None and a.fleet.sharing, within=5.0)
            await until(lambda: b.fleet is not None and b.fleet.sharing, within=5.0)
            assert any("shared again" in r.getMessage() for r in caplog.records)
            faults(upstream, inst, {"mode": "status", "status": 500, "count": -1})
            await answer(a)
            await answer(a)
            await until(lambda: member_state(b) is BreakerState.OPEN, within=1.0)  # shared once more
    finally:
        redis.terminate()
        redis.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_redis(url: str) -> None:
    s = RedisState(url, "probe")
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                await s.open()
                return
            except Exception:
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.05)
    finally:
        await s.close()
