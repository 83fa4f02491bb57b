"""Two real `ragline serve` replicas sharing one real Redis: a breaker that opens on one opens on both.

The gateway model ``m`` has one deployment (``flaky``, an instance of the fault-injecting upstream,
tests/fault_upstream.py, whose request counts prove what reached it) and falls back to model ``fb``.
Replica A's breaker opens from failures; within 1 s replica B's opens too (its breaker gauge says
so) and B's requests go to the fallback without one reaching ``flaky``; after the cooldown exactly
one probe is sent across both replicas, and its success closes both.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest
import yaml

from conftest import ragline_process
from test_access_http import upstream  # noqa: F401  (a module fixture)
from test_gateway_fleet import calls, faults

pytestmark = pytest.mark.timeout(300)
MSG = [{"role": "user", "content": "Say hi."}]
INST = "replicas"
COOLDOWN = 2.0


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: str,  # noqa: F811  (the fixture imported above)
    redis_url: str,
) -> Iterator[list[str]]:
    tmp = tmp_path_factory.mktemp("gw-replicas")
    config = {
        "gateway": {
            "deployments": [
                {"name": "flaky", "base_url": f"{upstream}/{INST}/v1", "model": "x", "health_check": False},
                {
                    "name": "backup",
                    "base_url": f"{upstream}/{INST}-fb/v1",
                    "model": "x",
                    "health_check": False,
                },
                # nothing listens on port 9: every connect is refused; probed, once at start-up
                {"name": "dead", "base_url": "http://127.0.0.1:9/v1", "model": "x", "health_check": True},
            ],
            "models": {
                "m": {"deployments": ["flaky"], "fallbacks": ["fb"]},
                "d": {"deployments": ["dead"], "fallbacks": ["fb"]},
                "fb": {"deployments": ["backup"]},
            },
            "retry": {"max_attempts": 1},
            "breaker": {"consecutive_failures": 2, "cooldown_s": COOLDOWN},
            # one refused connect takes a probed deployment out; the breaker needs two failures
            "health": {"interval_s": 3600, "passive_failures": 1},
        }
    }
    (tmp / "ragline.yaml").write_text(yaml.safe_dump(config))
    env = {
        "RAGLINE_CONFIG": str(tmp / "ragline.yaml"),
        "RAGLINE_STATE__URL": redis_url,
        "RAGLINE_STATE__KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}",
    }
    with ExitStack() as stack:
        yield [stack.enter_context(ragline_process(tmp / f"r{i}", env=env))[1] for i in range(2)]


def metric(base: str, pattern: str) -> float:
    """The value of the first sample in /metrics matching ``pattern`` (0 when none)."""
    m = re.search(r"^" + pattern + r" (\S+)$", httpx.get(base + "/metrics").text, re.M)
    return float(m.group(1)) if m is not None else 0.0


def gauge(base: str) -> int:
    """Replica's ragline_breaker_state for ``flaky`` (0 closed, 1 half-open, 2 open)."""
    text = httpx.get(base + "/metrics").text
    m = re.search(r'^ragline_breaker_state\{deployment="flaky"\} (\S+)$', text, re.M)
    assert m is not None, "no breaker gauge for flaky"
    return int(float(m.group(1)))


async def answers(bases: list[str], n: int, model: str = "m") -> list[str]:
    """``n`` concurrent requests on each replica; who answered each (the upstream instance)."""
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=2 * n)) as client:
        rs = await asyncio.gather(
            *(
                client.post(
                    base + "/v1/chat/completions", json={"model": model, "messages": MSG, "max_tokens": 3}
                )
                for _ in range(n)
                for base in bases
            )
        )
    for r in rs:
        assert r.status_code == 200, r.text
    return [str(r.json()["choices"][0]["message"]["content"]).removeprefix("hello from ") for r in rs]


def within(seconds: float, check: Callable[[], bool]) -> float:
    t = time.monotonic()
    while not check():
        assert time.monotonic() - t < seconds, f"not within {seconds} s"
        time.sleep(0.01)
    return time.monotonic() - t


def test_a_breaker_opened_on_one_replica_opens_on_both_and_one_probe_closes_both(
    replicas: list[str],
    upstream: str,  # noqa: F811
) -> None:
    a, b = replicas
    assert gauge(a) == gauge(b) == 0
    faults(upstream, INST, {"mode": "status", "status": 500, "count": -1})
    before = calls(upstream, INST)
    assert asyncio.run(answers([a], 1)) == [f"{INST}-fb"]
    assert asyncio.run(answers([a], 1)) == [f"{INST}-fb"]
    assert calls(upstream, INST) == before + 2 and gauge(a) == 2  # A's breaker opened
    took = within(1.0, lambda: gauge(b) == 2)
    print(f"\nreplica B's breaker gauge read open {took * 1000:.0f} ms after A's opened (polled /metrics)")
    # B fails fast: 20 requests, all answered by the fallback, none reached the open deployment
    assert asyncio.run(answers([b], 20)) == [f"{INST}-fb"] * 20
    assert calls(upstream, INST) == before + 2

    time.sleep(COOLDOWN + 0.1)
    faults(upstream, INST, {"mode": "ok", "delay": 0.5})  # a slow, good probe
    who = asyncio.run(answers([a, b], 20))
    assert calls(upstream, INST) == before + 3, "more than one probe across the two replicas"
    assert who.count(INST) == 1 and who.count(f"{INST}-fb") == 39
    within(1.0, lambda: gauge(a) == gauge(b) == 0)  # the probe's success closed both
    faults(upstream, INST)
    assert asyncio.run(answers([a, b], 1)) == [INST, INST]


def test_connect_failures_on_one_replica_take_the_deployment_out_on_both(replicas: list[str]) -> None:
    """Passive health: a refused connect on A takes ``dead`` out of rotation on A and on B;
    B's requests then go to the fallback without trying it (B counts no connect error for it)."""
    a, b = replicas
    connects = r'ragline_upstream_errors_total\{deployment="dead",kind="connect"\}'
    assert asyncio.run(answers([a], 1, "d")) == [f"{INST}-fb"]
    assert metric(a, connects) == 1  # out of rotation on A (its breaker is still closed)
    time.sleep(1.0)  # the message has long arrived (B's breaker opened in tens of ms above)
    assert asyncio.run(answers([b], 10, "d")) == [f"{INST}-fb"] * 10
    assert metric(b, connects) == 0, "B tried the deployment A took out of rotation"
