"""The LLM gateway against real processes on loopback.

Processes: a fault-injecting OpenAI-compatible upstream (tests/fault_upstream.py, one
process standing in for many upstreams by path prefix), two more of them that the tests
SIGKILL, a plain `ragline serve` whose embedded model is an upstream, and the gateway under
test: a second `ragline serve` whose config routes model names to all of those. Clients are
the official openai SDK (and httpx where raw HTTP matters). Every address is 127.0.0.1.

A first block of tests drives the gateway's parts in-process (breaker, balancers, retry
policy, rules, SSE, settings validation): fast, exact, no network.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from ragline.config import load_settings
from ragline.errors import ConfigError
from ragline.gateway.balancer import LeastInFlight, LowestLatency, RoundRobin, Weighted
from ragline.gateway.breaker import BreakerState, CircuitBreaker
from ragline.gateway.retry import RetryPolicy, parse_retry_after
from ragline.gateway.rules import Rule, RuleSet
from ragline.gateway.sse import SSEDecoder

HERE = Path(__file__).resolve().parent
RAGLINE = str(Path(sys.executable).parent / "ragline")
FAULT_SCRIPT = str(HERE / "fault_upstream.py")
HOST = "127.0.0.1"
MSG = [{"role": "user", "content": "Say hi."}]


# ======================================================================================
# In-process: the parts
# ======================================================================================


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_consecutive_failures_and_half_open_admits_one_probe() -> None:
    clock = FakeClock()
    changes: list[BreakerState] = []
    b = CircuitBreaker(consecutive_failures=3, cooldown=5.0, clock=clock, on_change=changes.append)
    for _ in range(2):
        assert b.acquire()
        b.record_failure()
    assert b.state is BreakerState.CLOSED
    b.record_success()  # a success resets the run
    for _ in range(3):
        b.record_failure()
    assert b.state is BreakerState.OPEN and not b.available() and not b.acquire()
    clock.now += 4.9
    assert not b.available()
    clock.now += 0.2
    assert b.state is BreakerState.HALF_OPEN and b.available()
    assert b.acquire()  # the probe
    assert not b.available() and not b.acquire()  # only one
    b.record_failure()  # probe failed: open again for a full cooldown
    assert b.state is BreakerState.OPEN
    clock.now += 5.0
    assert b.acquire()
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.available()
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_breaker_failure_rate_and_cancelled_probe() -> None:
    clock = FakeClock()
    b = CircuitBreaker(consecutive_failures=100, failure_rate=0.5, window=10, min_requests=10, clock=clock)
    for i in range(9):
        (b.record_failure if i % 2 else b.record_success)()
    assert b.state is BreakerState.CLOSED  # 4 of 9, and fewer than min_requests
    b.record_failure()
    assert b.state is BreakerState.OPEN  # 5 of 10
    clock.now += b.cooldown
    assert b.acquire()
    b.release()  # the probe's client went away: nothing learnt, the next request may probe
    assert b.acquire()


def test_open_breaker_rejects_in_microseconds() -> None:
    b = CircuitBreaker(consecutive_failures=1, cooldown=60.0)
    b.record_failure()
    n = 100_000
    start = time.perf_counter()
    for _ in range(n):
        b.available()
    per_call = (time.perf_counter() - start) / n
    print(f"\nopen breaker check: {per_call * 1e6:.3f} µs")
    assert per_call < 20e-6


class Cand:
    def __init__(self, name: str, weight: float = 1.0) -> None:
        self.name, self.weight, self.in_flight, self.latency = name, weight, 0, None


def test_balancers_distribute_as_specified() -> None:
    a, b, c = Cand("a", 5), Cand("b", 1), Cand("c", 2)
    rr = RoundRobin()
    assert [rr.pick([a, b, c]).name for _ in range(6)] == list("abcabc")
    w = Weighted()
    picks = [w.pick([a, b, c]).name for _ in range(80)]
    assert (picks.count("a"), picks.count("b"), picks.count("c")) == (50, 10, 20)
    assert "aaaaa" not in "".join(picks[:8])  # smooth: interleaved, not in bursts
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 1
    lif = LeastInFlight()
    assert {lif.pick([a, b, c]).name for _ in range(4)} == {"b", "c"}
    lat = LowestLatency()
    a.latency, b.latency, c.latency = 0.3, 0.05, None
    assert lat.pick([a, b, c]).name == "c"  # unknown latency: explore first
    c.latency = 0.2
    picks = [lat.pick([a, b, c]).name for _ in range(39)]
    assert picks.count("b") >= 37  # the fastest, bar the periodic exploration


def test_retry_policy_full_jitter_and_retry_after() -> None:
    p = RetryPolicy(backoff_base=0.1, backoff_max=1.0, rng=lambda: 1.0)
    assert [p.backoff(n) for n in (1, 2, 3, 4, 5, 6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    p = RetryPolicy(backoff_base=0.1, backoff_max=1.0)
    assert all(0.0 <= p.backoff(4) <= 0.8 for _ in range(200))
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_rules_route_by_task_tier_and_size() -> None:
    rules = RuleSet(
        [
            Rule(group="small", model="auto", tasks=frozenset({"classify"})),
            Rule(group="big", model="auto", tiers=frozenset({"premium"})),
            Rule(group="small", model="auto", max_tokens=50),
            Rule(group="big", model="auto"),
            Rule(group="small", model="gpt", max_chars=10),
        ],
        ["small", "big", "gpt"],
    )
    assert rules.virtual_models == ("auto",)
    short = {"messages": [{"role": "user", "content": "hi"}]}
    long = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 400}]}]}
    assert rules.route("auto", {"x-ragline-task": "Classify"}, long) == "small"
    assert rules.route("auto", {"x-ragline-tier": "premium"}, short) == "big"
    assert rules.route("auto", {}, short) == "small"
    assert rules.route("auto", {}, long) == "big"
    assert rules.route("gpt", {}, short) == "small"
    assert rules.route("gpt", {}, long) is None  # no rule: the model's own group


def test_sse_decoder() -> None:
    d = SSEDecoder()
    out = [
        d.feed(x) for x in [": keep-alive", "", "event: message", "data: {", "data: }", "", "data:[DONE]", ""]
    ]
    assert [x for x in out if x is not None] == ["{\n}", "[DONE]"]


@pytest.mark.parametrize(
    ("gateway", "fix"),
    [
        (
            {
                "deployments": [{"name": "a", "base_url": "http://h:1/v1", "model": "m"}],
                "models": {"x": {"deployments": ["b"]}},
            },
            "references unknown deployment 'b'; defined: a",
        ),
        ({"deployments": [{"name": "a", "base_url": "ftp://h/v1", "model": "m"}]}, "is not an http(s) URL"),
        ({"deployments": [{"name": "a", "kind": "openai", "model": "m"}]}, "needs base_url"),
        ({"deployments": [{"name": "a", "base_url": "http://h/v1"}]}, "needs model"),
        (
            {
                "deployments": [{"name": "a", "kind": "local"}],
                "models": {"x": {"deployments": ["a"], "fallbacks": ["y"]}},
            },
            "falls back to unknown model 'y'",
        ),
        (
            {
                "deployments": [{"name": "a", "kind": "local"}],
                "models": {"x": {"deployments": ["a"]}},
                "rules": [{"model": "auto", "tier": ["gold"], "group": "x"}],
            },
            "virtual model 'auto' has no default",
        ),
        (
            {
                "deployments": [{"name": "a", "kind": "local"}],
                "models": {"x": {"deployments": ["a"]}},
                "rules": [{"task": ["t"], "group": "nope"}],
            },
            "rules[0] routes to unknown model group 'nope'",
        ),
        (
            {
                "deployments": [
                    {
                        "name": "a",
                        "base_url": "http://h/v1",
                        "model": "m",
                        "api_key_env": "RL_TEST_UNSET_KEY",
                    }
                ]
            },
            "environment variable RL_TEST_UNSET_KEY (api_key_env) is not set",
        ),
        ({"deployments": [{"name": "a", "kind": "local"}, {"name": "a", "kind": "local"}]}, "repeated: a"),
    ],
)
def test_settings_say_what_to_fix(tmp_path: Path, gateway: dict[str, Any], fix: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(data_dir=tmp_path, gateway=gateway)
    assert fix in str(exc.value)


def test_api_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RL_TEST_GATEWAY_KEY", "sk-test")
    s = load_settings(
        data_dir=tmp_path,
        gateway={
            "deployments": [
                {"name": "a", "base_url": "http://h/v1", "model": "m", "api_key_env": "RL_TEST_GATEWAY_KEY"}
            ]
        },
    )
    key = s.gateway.deployments[0].api_key
    assert key is not None and key.get_secret_value() == "sk-test"


# ======================================================================================
# Real processes
# ======================================================================================


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{url} exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"{url} not ready in {timeout} s: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def _fault(port: int, log: Path) -> Proc:
    return Proc([sys.executable, FAULT_SCRIPT, "--port", str(port)], log)


class Env:
    """The processes and their addresses."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fault_port, self.p1_port, self.p2_port = _free_port(), _free_port(), _free_port()
        self.ragline_port, self.gateway_port, self.dead_port = _free_port(), _free_port(), _free_port()
        self.fault = f"http://{HOST}:{self.fault_port}"
        self.gateway = f"http://{HOST}:{self.gateway_port}"

    def up(self, instance: str, port: int | None = None) -> str:
        return f"http://{HOST}:{port or self.fault_port}/{instance}/v1"

    def config(self) -> dict[str, Any]:
        def dep(name: str, **kw: Any) -> dict[str, Any]:
            return {"name": name, "base_url": self.up(name), "model": f"up-{name}", **kw}

        no_probe = {"health_check": False}
        deployments = [
            dep("echo"),
            dep("retry", **no_probe),
            dep("r400", **no_probe),
            dep("ra", **no_probe),
            dep("ra2", **no_probe),
            dep("brk", **no_probe),
            dep("stall", timeouts={"first_token_s": 30, "total_s": 60}),
            dep("rr1"),
            dep("rr2"),
            dep("rr3"),
            dep("w1", weight=3),
            dep("w2", weight=1),
            dep("lif-slow"),
            dep("lif-fast"),
            dep("lat-slow"),
            dep("lat-fast"),
            dep("hc-a"),
            dep("hc-b"),
            dep("live"),
            dep("backup"),
            dep("streamy", **no_probe),
            dep("cancel"),
            dep("small"),
            dep("big"),
            {"name": "dead", "base_url": f"http://{HOST}:{self.dead_port}/v1", "model": "m", **no_probe},
            {"name": "p1", "base_url": self.up("p1", self.p1_port), "model": "up-p1"},
            {"name": "p2", "base_url": self.up("p2", self.p2_port), "model": "up-p2"},
            {"name": "rl", "base_url": f"http://{HOST}:{self.ragline_port}/v1", "model": "local"},
            {"name": "emb", "kind": "local", "model": "embedded-local"},
        ]

        def group(*deps: str, **kw: Any) -> dict[str, Any]:
            return {"deployments": list(deps), **kw}

        models = {
            name: group(name)
            for name in (
                "echo",
                "retry",
                "r400",
                "ra",
                "ra2",
                "stall",
                "streamy",
                "cancel",
                "small",
                "big",
                "backup",
            )
        }
        models |= {
            "fragile": group("brk"),
            "rr": group("rr1", "rr2", "rr3", strategy="round_robin"),
            "weighted": group("w1", "w2", strategy="weighted"),
            "lif": group("lif-slow", "lif-fast", strategy="least_in_flight"),
            "fastest": group("lat-slow", "lat-fast", strategy="lowest_latency"),
            "hc": group("hc-a", "hc-b"),
            "connect": group("dead", "live"),
            "alldown": group("dead"),
            "resilient": group("p1", fallbacks=["backup"]),
            "primary": group("p2", fallbacks=["via-ragline"]),
            "via-ragline": group("rl"),
            "edge": group("dead", fallbacks=["embedded"]),
            "embedded": group("emb"),
        }
        rules = [
            {"model": "auto", "task": ["summarize", "classify"], "group": "small"},
            {"model": "auto", "tier": ["premium"], "group": "big"},
            {"model": "auto", "max_chars": 200, "group": "small"},
            {"model": "auto", "group": "big"},
        ]
        return {
            "llm": {"n_parallel": 2, "max_tokens": 16},
            "gateway": {
                "deadline_s": 20,
                "retry": {
                    "max_attempts": 3,
                    "backoff_base_s": 0.02,
                    "backoff_max_s": 0.2,
                    "max_retry_after_s": 3,
                },
                "breaker": {
                    "consecutive_failures": 3,
                    "failure_rate": 0.5,
                    "window": 20,
                    "min_requests": 10,
                    "cooldown_s": 1.0,
                },
                "health": {"interval_s": 0.3, "timeout_s": 1.0, "unhealthy_after": 1, "healthy_after": 1},
                "deployments": deployments,
                "models": models,
                "rules": rules,
            },
        }

    # -- fault upstream admin ---------------------------------------------------------

    def faults(
        self,
        instance: str,
        faults: list[dict[str, Any]],
        default: dict[str, Any] | None = None,
        port: int | None = None,
    ) -> None:
        body: dict[str, Any] = {"instance": instance, "faults": faults}
        if default is not None:
            body["default"] = default
        httpx.post(f"http://{HOST}:{port or self.fault_port}/admin/faults", json=body).raise_for_status()

    def health(self, instance: str, ok: bool) -> None:
        httpx.post(f"{self.fault}/admin/health", json={"instance": instance, "ok": ok}).raise_for_status()

    def stats(self, instance: str, port: int | None = None) -> dict[str, Any]:
        all_stats = httpx.get(f"http://{HOST}:{port or self.fault_port}/admin/stats").json()
        return dict(
            all_stats.get(instance) or {"requests": 0, "completed": 0, "cancelled": 0, "last_body": None}
        )

    def hits(self, instance: str, port: int | None = None) -> int:
        return int(self.stats(instance, port)["requests"])

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.gateway + "/metrics").text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("gateway")
    e = Env(tmp)
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(e.config()))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    procs = [_fault(e.fault_port, tmp / "fault.log")]
    procs.append(
        Proc(
            [RAGLINE, "serve", "--port", str(e.ragline_port)],
            tmp / "upstream-ragline.log",
            {
                **base_env,
                "RAGLINE_DATA_DIR": str(tmp / "upstream-data"),
                "RAGLINE_LLM__N_PARALLEL": "2",
                "RAGLINE_LLM__MAX_TOKENS": "16",
            },
        )
    )
    procs.append(
        Proc(
            [RAGLINE, "serve", "--config", str(tmp / "gateway.yaml"), "--port", str(e.gateway_port)],
            tmp / "gateway.log",
            {**base_env, "RAGLINE_DATA_DIR": str(tmp / "gateway-data")},
        )
    )
    try:
        procs[0].wait_ready(e.fault + "/admin/stats", 30)
        procs[1].wait_ready(f"http://{HOST}:{e.ragline_port}/health/ready", 120)
        procs[2].wait_ready(e.gateway + "/health/ready", 120)
        yield e
    finally:
        for p in reversed(procs):  # the gateway first: its upstreams vanishing is not news
            p.stop()


@pytest.fixture
def client(env: Env) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.gateway + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture
def killable(env: Env) -> Iterator[Callable[[int, str], Proc]]:
    started: list[Proc] = []

    def start(port: int, name: str) -> Proc:
        """Start a fault upstream serving instance ``name``; return once the gateway has seen it healthy."""
        p = _fault(port, env.tmp / f"{name}.log")
        started.append(p)
        p.wait_ready(f"http://{HOST}:{port}/admin/stats", 30)
        deadline = time.monotonic() + 5  # two probes: the first one's result is recorded by then
        while env.stats(name, port).get("probes", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        return p

    yield start
    for p in started:
        p.stop()


def _ask(client: openai.OpenAI, model: str, **kw: Any) -> Any:
    return client.chat.completions.create(model=model, messages=MSG, **kw)  # type: ignore[arg-type]


# -- names and pass-through ---------------------------------------------------------------


def test_models_lists_gateway_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"local", "rr", "fragile", "resilient", "auto"} <= ids


def test_embedded_model_and_unknown_names_behave_as_before(client: openai.OpenAI) -> None:
    r = _ask(client, "local", max_tokens=4)
    assert r.model == "local" and r.choices[0].message.content is not None
    chunks = list(_ask(client, "local", max_tokens=4, stream=True))
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason in ("stop", "length")
    for missing in ("nope", "rag/nope"):
        with pytest.raises(openai.NotFoundError):
            _ask(client, missing)


def test_body_passes_through_with_model_rewritten(env: Env) -> None:
    body = {
        "model": "echo",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "seed": 7,
        "stop": ["\n\n"],
        "temperature": 0.5,
        "user": "u-1",
        "logit_bias": {"50256": -100},
        "metadata": {"trace": "abc"},
    }
    r = httpx.post(env.gateway + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "up-echo"
    assert env.stats("echo")["last_body"] == {**body, "model": "up-echo"}


# -- retries ------------------------------------------------------------------------------


def test_400_is_passed_through_and_not_retried(env: Env, client: openai.OpenAI) -> None:
    env.faults("r400", [{"mode": "status", "status": 400}])
    before = env.hits("r400")
    with pytest.raises(openai.BadRequestError) as exc:
        _ask(client, "r400")
    assert "injected 400" in exc.value.message
    assert env.hits("r400") - before == 1


def test_500_is_retried(env: Env, client: openai.OpenAI) -> None:
    env.faults("retry", [{"mode": "status", "status": 500, "count": 2}])
    before = env.hits("retry")
    retries = env.metric("ragline_retries_total", model="retry")
    r = _ask(client, "retry")
    assert r.choices[0].message.content == "hello from retry"
    assert env.hits("retry") - before == 3
    assert env.metric("ragline_retries_total", model="retry") - retries == 2


def test_429_retry_after_is_honoured(env: Env, client: openai.OpenAI) -> None:
    env.faults("ra", [{"mode": "status", "status": 429, "retry_after": 1}])
    before = env.hits("ra")
    start = time.monotonic()
    r = _ask(client, "ra")
    elapsed = time.monotonic() - start
    assert r.choices[0].message.content == "hello from ra"
    assert env.hits("ra") - before == 2
    assert 1.0 <= elapsed < 2.5, elapsed


def test_429_with_retry_after_beyond_the_limit_is_answered_at_once(env: Env, client: openai.OpenAI) -> None:
    env.faults("ra2", [{"mode": "status", "status": 429, "retry_after": 60}])
    start = time.monotonic()
    with pytest.raises(openai.RateLimitError) as exc:
        _ask(client, "ra2")
    assert time.monotonic() - start < 1.0
    assert "retry after 60 s" in exc.value.message
    assert env.hits("ra2") == 1


def test_connect_errors_are_retried_on_another_deployment(env: Env, client: openai.OpenAI) -> None:
    before = env.hits("live")
    errors = env.metric("ragline_upstream_errors_total", deployment="dead", kind="connect")
    for _ in range(4):
        assert _ask(client, "connect").choices[0].message.content == "hello from live"
    assert env.hits("live") - before == 4
    assert env.metric("ragline_upstream_errors_total", deployment="dead", kind="connect") - errors >= 1


def test_every_deployment_down_is_503_with_the_reasons(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        _ask(client, "alldown")
    assert exc.value.status_code == 503
    assert "deployment 'dead'" in exc.value.message
    assert "unreachable (connect failed)" in exc.value.message or "circuit breaker open" in exc.value.message
    message = exc.value.response.json()["error"]["message"]
    assert "http://" not in message and "Error" not in message  # no address, no exception class


# -- circuit breaker ----------------------------------------------------------------------


def test_breaker_opens_fails_fast_and_half_open_probe_closes_it(env: Env, client: openai.OpenAI) -> None:
    env.faults("brk", [], default={"mode": "status", "status": 500})
    with pytest.raises(openai.InternalServerError):
        _ask(client, "fragile")  # 3 attempts, 3 failures in a row: the breaker opens
    assert env.hits("brk") == 3
    assert env.metric("ragline_breaker_state", deployment="brk") == 2
    # open: answered by the gateway alone, fast
    timings = []
    with httpx.Client(base_url=env.gateway, timeout=5) as h:
        payload = {"model": "fragile", "messages": MSG}
        h.post("/v1/chat/completions", json=payload)  # warm the connection
        for _ in range(20):
            start = time.perf_counter()
            r = h.post("/v1/chat/completions", json=payload)
            timings.append(time.perf_counter() - start)
            assert r.status_code == 503 and "circuit breaker open" in r.json()["error"]["message"]
    p50, worst = statistics.median(timings), max(timings)
    print(f"\nopen-breaker answer over HTTP: p50 {p50 * 1e3:.2f} ms, max {worst * 1e3:.2f} ms")
    assert p50 < 0.05 and worst < 0.1
    assert env.hits("brk") == 3  # nothing reached the upstream
    # recovery: after the cooldown one probe goes through (the others are refused meanwhile)
    env.faults("brk", [], default={"mode": "ok", "delay": 0.5})
    time.sleep(1.1)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=env.gateway, timeout=10) as h:
            rs = await asyncio.gather(
                *(
                    h.post("/v1/chat/completions", json={"model": "fragile", "messages": MSG})
                    for _ in range(5)
                )
            )
        return [r.status_code for r in rs]

    statuses = asyncio.run(burst())
    assert sorted(statuses) == [200, 503, 503, 503, 503]
    assert env.hits("brk") == 4
    assert env.metric("ragline_breaker_state", deployment="brk") == 0
    assert _ask(client, "fragile").choices[0].message.content == "hello from brk"


# -- deadlines and streams ------------------------------------------------------------------


def test_deadline_is_respected(env: Env, client: openai.OpenAI) -> None:
    env.faults("stall", [], default={"mode": "stall", "delay": 30})
    try:
        for stream in (False, True):
            start = time.monotonic()
            with pytest.raises(openai.APIStatusError) as exc:
                _ask(client, "stall", stream=stream, extra_headers={"x-ragline-timeout": "1.0"})
            elapsed = time.monotonic() - start
            assert exc.value.status_code == 504
            assert "deadline" in exc.value.message
            assert 1.0 <= elapsed < 1.5, (stream, elapsed)
    finally:
        env.faults("stall", [], default={"mode": "ok"})


def test_reset_mid_stream_ends_with_an_error_event_and_no_retry(env: Env, client: openai.OpenAI) -> None:
    env.faults("streamy", [{"mode": "reset", "after": 2, "tokens": 5}])
    before = env.hits("streamy")
    text = ""
    stream = _ask(client, "streamy", stream=True)
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text == "w0 w1 "
    assert "interrupted" in str(exc.value.message)
    assert env.hits("streamy") - before == 1


def test_reset_before_the_first_token_is_retried_unseen(env: Env, client: openai.OpenAI) -> None:
    env.faults("streamy", [{"mode": "reset", "after": 0}])
    before = env.hits("streamy")
    text = "".join(
        c.choices[0].delta.content or "" for c in _ask(client, "streamy", stream=True) if c.choices
    )
    assert text == "w0 w1 hello from streamy"
    assert env.hits("streamy") - before == 2


def test_client_disconnect_cancels_the_upstream_stream(env: Env) -> None:
    env.faults("cancel", [], default={"mode": "ok", "tokens": 100, "token_delay": 0.05})
    before = env.stats("cancel")
    payload = {"model": "cancel", "stream": True, "messages": MSG}
    with httpx.stream("POST", env.gateway + "/v1/chat/completions", json=payload, timeout=10) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 3:
                break
    deadline = time.monotonic() + 5
    while env.stats("cancel")["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = env.stats("cancel")
    assert after["cancelled"] - before["cancelled"] == 1
    assert after["completed"] == before["completed"]


def test_client_disconnect_cancels_a_non_streamed_upstream_call(env: Env) -> None:
    env.faults("cancel", [{"mode": "ok", "delay": 3.0}])
    gone = env.metric("ragline_requests_total", route="/v1/chat/completions", status="499")
    payload = {"model": "cancel", "messages": MSG}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(env.gateway + "/v1/chat/completions", json=payload, timeout=0.5)
    deadline = time.monotonic() + 2  # well before the upstream would answer
    while env.metric("ragline_deployment_in_flight", deployment="cancel") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert env.metric("ragline_deployment_in_flight", deployment="cancel") == 0
    assert env.metric("ragline_requests_total", route="/v1/chat/completions", status="499") == gone + 1


# -- load balancing and rules ---------------------------------------------------------------


def test_round_robin_and_weighted(env: Env, client: openai.OpenAI) -> None:
    before = {i: env.hits(i) for i in ("rr1", "rr2", "rr3", "w1", "w2")}
    for _ in range(9):
        _ask(client, "rr")
    for _ in range(8):
        _ask(client, "weighted")
    got = {i: env.hits(i) - before[i] for i in before}
    assert got == {"rr1": 3, "rr2": 3, "rr3": 3, "w1": 6, "w2": 2}


def test_least_in_flight_avoids_the_busy_deployment(env: Env) -> None:
    env.faults("lif-slow", [], default={"mode": "ok", "delay": 0.6})
    env.faults("lif-fast", [], default={"mode": "ok", "delay": 0.02})
    before = {i: env.hits(i) for i in ("lif-slow", "lif-fast")}

    async def run() -> None:
        aclient = openai.AsyncOpenAI(base_url=env.gateway + "/v1", api_key="unused", max_retries=0)
        sem = asyncio.Semaphore(3)

        async def one() -> None:
            async with sem:
                await aclient.chat.completions.create(model="lif", messages=MSG)  # type: ignore[arg-type]

        await asyncio.gather(*(one() for _ in range(15)))
        await aclient.close()

    asyncio.run(run())
    slow, fast = (env.hits(i) - before[i] for i in ("lif-slow", "lif-fast"))
    assert slow + fast == 15
    assert slow <= 4, (slow, fast)  # round robin would have sent it 7 or 8


def test_lowest_latency_prefers_the_fast_deployment(env: Env, client: openai.OpenAI) -> None:
    env.faults("lat-slow", [], default={"mode": "ok", "delay": 0.15})
    before = {i: env.hits(i) for i in ("lat-slow", "lat-fast")}
    for _ in range(12):
        _ask(client, "fastest")
    slow, fast = (env.hits(i) - before[i] for i in ("lat-slow", "lat-fast"))
    assert slow <= 2 and fast >= 10, (slow, fast)


def test_rules_pick_the_configured_group(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "Please consider this. " * 20}]

    def served(messages: list[dict[str, str]], **headers: str) -> str:
        r = client.chat.completions.create(model="auto", messages=messages, extra_headers=headers)  # type: ignore[arg-type]
        return r.model

    assert served(long, **{"x-ragline-task": "summarize"}) == "up-small"
    assert served(MSG, **{"x-ragline-tier": "premium"}) == "up-big"
    assert served(MSG) == "up-small"
    assert served(long) == "up-big"


# -- health ----------------------------------------------------------------------------------


def test_unhealthy_deployment_leaves_rotation_and_comes_back(env: Env, client: openai.OpenAI) -> None:
    def spread(n: int) -> tuple[int, int]:
        a, b = env.hits("hc-a"), env.hits("hc-b")
        for _ in range(n):
            _ask(client, "hc")
        return env.hits("hc-a") - a, env.hits("hc-b") - b

    def wait_probes() -> None:
        start = env.stats("hc-a")["probes"]
        deadline = time.monotonic() + 5
        while env.stats("hc-a")["probes"] < start + 2 and time.monotonic() < deadline:
            time.sleep(0.05)

    env.health("hc-a", False)
    try:
        wait_probes()
        assert spread(6) == (0, 6)
    finally:
        env.health("hc-a", True)
    wait_probes()
    assert spread(6) == (3, 3)


# -- fallbacks ---------------------------------------------------------------------------------


def test_fallback_to_the_embedded_local_model(client: openai.OpenAI) -> None:
    r = _ask(client, "edge", max_tokens=8)
    assert r.model == "embedded-local" and r.choices[0].message.content
    text = "".join(
        c.choices[0].delta.content or "" for c in _ask(client, "edge", stream=True, max_tokens=8) if c.choices
    )
    assert text


def test_fallback_to_a_ragline_upstream_when_the_primary_is_sigkilled(
    env: Env, client: openai.OpenAI, killable: Callable[[int, str], Proc]
) -> None:
    primary = killable(env.p2_port, "p2")
    assert _ask(client, "primary").model == "up-p2"
    primary.kill()
    fallbacks = env.metric("ragline_fallbacks_total", model="primary", fallback="via-ragline")
    r = _ask(client, "primary", max_tokens=8)
    assert r.model == "local" and r.choices[0].message.content  # the second ragline's embedded model
    text = "".join(
        c.choices[0].delta.content or ""
        for c in _ask(client, "primary", stream=True, max_tokens=8)
        if c.choices
    )
    assert text
    assert env.metric("ragline_fallbacks_total", model="primary", fallback="via-ragline") - fallbacks == 2


def test_no_request_is_lost_when_the_primary_dies_midway(
    env: Env, killable: Callable[[int, str], Proc]
) -> None:
    primary = killable(env.p1_port, "p1")
    env.faults("p1", [], default={"mode": "ok", "delay": 0.15}, port=env.p1_port)
    before_backup = env.hits("backup")

    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(
            base_url=env.gateway + "/v1", api_key="unused", max_retries=0, timeout=30
        )

        async def one(i: int) -> str:
            await asyncio.sleep(i * 0.01)  # spread over 0.5 s
            r = await aclient.chat.completions.create(model="resilient", messages=MSG)  # type: ignore[arg-type]
            return r.model

        async def killer() -> None:
            await asyncio.sleep(0.25)
            await asyncio.to_thread(primary.kill)

        results = await asyncio.gather(*(one(i) for i in range(50)), killer())
        await aclient.close()
        return [r for r in results if r is not None]

    served = asyncio.run(run())
    assert len(served) == 50  # every request answered (any exception would have failed gather)
    assert served.count("up-p1") > 0 and served.count("up-backup") > 0, served
    assert served.count("up-p1") + served.count("up-backup") == 50
    assert env.hits("backup") - before_backup >= served.count("up-backup")
