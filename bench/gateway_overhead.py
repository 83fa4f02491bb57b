"""Gateway overhead: what `ragline serve` and the LiteLLM proxy add on top of the same upstream.

    .venv/bin/python -m bench.gateway_overhead [--requests 1000] [--stream-requests 300]
        [--duration 10] [--load-rounds 3] [--connections 64] [--litellm-venv bench/.litellm-venv]

Targets on 127.0.0.1, all in front of one mock upstream (``bench/mock_upstream.py``, which
does no work):

- ``direct``:  client -> mock
- ``floor``:   client -> a do-nothing pure-ASGI proxy on uvicorn (``bench/floor_proxy.py``) -> mock;
  a reference row: what a bare Python hop costs on this machine, before any gateway logic
- ``ragline``: client -> ``ragline serve`` (gateway model ``mock``, one ``openai`` deployment) -> mock
- ``litellm``: client -> LiteLLM proxy (model ``mock`` -> ``openai/mock``, 1 worker) -> mock

LiteLLM runs from its own virtualenv, created by ``bench/litellm_setup.sh`` when missing. It runs
without a database, with telemetry off, the local model cost map (no fetch), its logs at ERROR
and no master key (``LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY``: ragline has no auth
either). ``ragline serve`` runs with its defaults.

Measured, every phase interleaved across the targets (rotating order, in rounds) so drift on
a shared machine hits all of them alike:

1. sequential non-streaming requests over one keep-alive connection per target (httpx):
   latency P50/P99, added over ``direct``, and the serving process's CPU per request (robust
   to a busy machine, unlike wall-clock latency);
2. streaming: time to the first body byte, added over ``direct``;
3. load: 64 concurrent connections (``wrk``, installed with apt-get when missing; an asyncio
   client otherwise) for ``--duration`` s: RPS, P99, and RPS per core = requests / CPU seconds
   the serving process (and its children) used during the run. The client's own CPU is reported.

Bars (issue 4): ragline sequential P50 added <= 0.5 ms and <= 1/8 of LiteLLM's; ragline RPS per
core >= 10x LiteLLM's; ragline P99 added (sequential) <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._common import REPO, median, percentile, write_result

BENCH = REPO / "bench"
DEFAULT_LITELLM_VENV = BENCH / ".litellm-venv"
PATH = "/v1/chat/completions"
BODY = {"model": "mock", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
STREAM_BODY = {**BODY, "stream": True}
TARGETS = ("direct", "floor", "ragline", "ragline-auth", "ragline-shared", "litellm", "litellm-key")
ACCESS_TARGETS = {"ragline-auth": "embedded", "ragline-shared": "shared"}
# limits and budgets high enough that the benchmark never reaches them: every one is checked on
# every request, none refuses
BIG_RATE = "1000000000/minute"
BIG_BUDGET = "1000000000"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes --------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    cpu_of: list[int] = field(default_factory=list)  # pids whose CPU counts as this target's
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (the API key)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and every descendant alive now (threads included)."""
        total = 0
        for pid in _tree(self.proc.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLK_TCK

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, 9)
                self.proc.wait(5)


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Server:
    port = int(argv[argv.index("--port") + 1])
    log = workdir / f"{name}.log"
    fh = log.open("wb")
    proc = subprocess.Popen(
        argv, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True
    )
    return Server(name, port, proc, log)


def _wait_ready(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name} exited ({server.proc.returncode}); see {server.log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + path, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{server.name} not ready after {timeout:.0f} s; see {server.log}")


def start_mock(workdir: Path) -> Server:
    argv = [sys.executable, "-m", "bench.mock_upstream", "--port", str(_free_port())]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = _start("mock", argv, workdir, env)
    _wait_ready(server, "/v1/models", 30)
    return server


def start_floor(workdir: Path, mock: Server) -> Server:
    argv = [sys.executable, "-m", "bench.floor_proxy", "--port", str(_free_port())]
    argv += ["--upstream-port", str(mock.port)]
    server = _start("floor", argv, workdir, {**os.environ, "PYTHONPATH": str(REPO)})
    _wait_ready(server, "/v1/models", 30)
    return server


def start_ragline(
    workdir: Path,
    mock: Server,
    name: str = "ragline",
    src: Path | None = None,
    access: str | None = None,
    store_url: str | None = None,
    state_url: str | None = None,
) -> Server:
    """``ragline serve`` in front of the mock; ``src``: run that checkout's ``src/`` instead of this one
    (same virtualenv), for a side-by-side before/after row.

    ``access``: None = no keys (the server runs open on loopback); otherwise an application key of a
    tenant, both with a requests and a tokens rate limit and a monthly budget, and a price for the
    model, so every request is authenticated, counted against four rate limits, reserves its cost
    in two budgets and settles it after the call. ``store_url`` / ``state_url``: PostgreSQL and
    Redis ("shared"); SQLite and in-process counters otherwise ("embedded").
    """
    workdir = workdir / name
    workdir.mkdir(exist_ok=True)
    config = workdir / "ragline.yaml"
    text = (
        f"data_dir: {workdir / 'ragline-data'}\n"
        "gateway:\n"
        "  deployments:\n"
        "    - name: mock\n"
        "      kind: openai\n"
        f"      base_url: {mock.url}/v1\n"
        "      model: mock\n"
        "  models:\n"
        "    mock: {deployments: [mock]}\n"
    )
    if access:
        text += "prices:\n  models:\n    mock: {input_per_million: 1.0, output_per_million: 2.0}\n"
        if store_url:
            text += f"store:\n  url: {store_url}\n"
        if state_url:
            text += f"state:\n  url: {state_url}\n"
    config.write_text(text)
    ragline = Path(sys.executable).parent / "ragline"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    headers: dict[str, str] = {}
    if access:
        limits = ["--budget", BIG_BUDGET, "--period", "month", "--requests", BIG_RATE, "--tokens", BIG_RATE]
        cli = [str(ragline)]
        conf = ["--config", str(config)]
        subprocess.run(
            [*cli, "tenants", "create", "bench", *limits, *conf],
            check=True,
            capture_output=True,
            env=env,
        )
        out = subprocess.run(
            [*cli, "keys", "create", "--tenant", "bench", "--name", "bench", *limits, "--json", *conf],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        headers["authorization"] = "Bearer " + json.loads(out)["api_key"]
    argv = [str(ragline), "serve", "--config", str(config), "--port", str(_free_port())]
    if src is not None:
        argv = [
            sys.executable,
            "-c",
            "import sys; from ragline.cli import main; sys.argv[0] = 'ragline'; main()",
            *argv[1:],
        ]
        env["PYTHONPATH"] = str(src / "src")
    server = _start(name, argv, workdir, env)
    server.headers = headers
    _wait_ready(server, "/health/ready", 120)  # the embedded models load in the background first
    return server


def litellm_venv(path: Path, install: bool) -> Path:
    """The LiteLLM venv, created by bench/litellm_setup.sh when it has no `litellm` yet."""
    if not (path / "bin" / "litellm").exists() or install:
        subprocess.run(["bash", str(BENCH / "litellm_setup.sh"), str(path)], check=True)
    return path


def litellm_version(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "show", "litellm"], capture_output=True, text=True
    ).stdout
    m = re.search(r"^Version: (\S+)", out, re.M)
    return m.group(1) if m else "unknown"


LITELLM_MASTER_KEY = "sk-bench-master-" + "0" * 32
PRISMA_OFFLINE = (
    "LiteLLM's virtual keys, budgets and rate limits need its database, reached through Prisma; "
    "`prisma` (PyPI 0.15.0) fetches its engine binaries from binaries.prisma.sh when first run, "
    "which fails offline (getaddrinfo ENOTFOUND binaries.prisma.sh), so 'litellm-key' "
    "authenticates LiteLLM's master key, with no database"
)


def start_litellm(
    workdir: Path, mock: Server, venv: Path, name: str = "litellm", key: bool = False
) -> Server:
    """The LiteLLM proxy; ``key``: with a master key that every request must present (see PRISMA_OFFLINE)."""
    workdir = workdir / name
    workdir.mkdir(exist_ok=True)
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: mock\n"
        "    litellm_params:\n"
        "      model: openai/mock\n"
        f"      api_base: {mock.url}/v1\n"
        "      api_key: sk-mock\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LITELLM_MASTER_KEY")}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no fetch of the model price map from GitHub
        LITELLM_TELEMETRY_DISABLED="true",
        LITELLM_LOG="ERROR",  # its uvicorn log level too: no access log lines
        NO_DOCS="True",
    )
    headers: dict[str, str] = {}
    if key:
        env["LITELLM_MASTER_KEY"] = LITELLM_MASTER_KEY
        headers["authorization"] = "Bearer " + LITELLM_MASTER_KEY
    else:
        env["LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY"] = "true"  # no auth, like ragline open
    port = _free_port()
    argv = [str(venv / "bin" / "litellm"), "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    server = _start(name, argv, workdir, env)
    server.headers = headers
    _wait_ready(server, "/health/liveliness", 180)
    return server


# -- sequential -------------------------------------------------------------------------------------


def _rotations(names: list[str], rounds: int) -> Iterator[tuple[int, list[str]]]:
    for r in range(rounds):
        k = r % len(names)
        yield r, names[k:] + names[:k]


def sequential(servers: dict[str, Server], n: int, rounds: int) -> dict[str, Any]:
    """Non-streaming requests, one keep-alive connection per target; latencies in ms."""
    clients = {
        name: httpx.Client(
            base_url=s.url, limits=httpx.Limits(max_connections=1), timeout=30.0, trust_env=False
        )
        for name, s in servers.items()
    }
    body = json.dumps(BODY).encode()
    headers = {name: {"content-type": "application/json", **s.headers} for name, s in servers.items()}
    lat: dict[str, list[float]] = {name: [] for name in servers}
    per_round: dict[str, list[float]] = {name: [] for name in servers}
    cpu = dict.fromkeys(servers, 0.0)
    header_ms: list[float] = []
    per = max(1, n // rounds)
    try:
        for name, c in clients.items():  # warm up: connections, caches, LiteLLM's first-call setup
            for _ in range(50):
                c.post(PATH, content=body, headers=headers[name]).raise_for_status()
        for _, order in _rotations(list(servers), rounds):
            for name in order:
                c = clients[name]
                got: list[float] = []
                cpu0 = servers[name].cpu_seconds()
                for _ in range(per):
                    t0 = time.perf_counter_ns()
                    r = c.post(PATH, content=body, headers=headers[name])
                    _ = r.content
                    got.append((time.perf_counter_ns() - t0) / 1e6)
                    if r.status_code != 200:
                        raise SystemExit(f"{name}: HTTP {r.status_code}: {r.text[:300]}")
                    h = r.headers.get("x-ragline-overhead-ms")
                    if h is not None:
                        header_ms.append(float(h))
                cpu[name] += servers[name].cpu_seconds() - cpu0
                lat[name].extend(got)
                per_round[name].append(median(got))
    finally:
        for c in clients.values():
            c.close()
    out: dict[str, Any] = {"requests_per_target": per * rounds, "rounds": rounds, "targets": {}}
    base = lat.get("direct")
    for name, values in lat.items():
        row: dict[str, Any] = {
            "p50_ms": percentile(values, 0.5),
            "p99_ms": percentile(values, 0.99),
            "mean_ms": sum(values) / len(values),
            # CPU the serving process spent per request (the mock's for direct): robust to a busy machine
            "server_cpu_ms_per_request": cpu[name] * 1000.0 / len(values),
        }
        if base is not None and name != "direct":
            row["added_p50_ms"] = row["p50_ms"] - percentile(base, 0.5)
            row["added_p99_ms"] = row["p99_ms"] - percentile(base, 0.99)
            # paired by round (same minute of the run): the median of per-round median differences
            row["added_p50_paired_ms"] = median(
                [a - b for a, b in zip(per_round[name], per_round["direct"], strict=True)]
            )
        out["targets"][name] = row
    if header_ms:
        out["ragline_overhead_header_ms"] = {
            "p50": percentile(header_ms, 0.5),
            "p99": percentile(header_ms, 0.99),
            "n": len(header_ms),
        }
    return out


def streaming(servers: dict[str, Server], n: int, rounds: int) -> dict[str, Any]:
    """Streaming requests: time to the first body byte (and to the end of the stream), in ms."""
    clients = {
        name: httpx.Client(
            base_url=s.url, limits=httpx.Limits(max_connections=1), timeout=30.0, trust_env=False
        )
        for name, s in servers.items()
    }
    body = json.dumps(STREAM_BODY).encode()
    base = {"content-type": "application/json", "accept": "text/event-stream"}
    headers = {name: {**base, **s.headers} for name, s in servers.items()}
    ttfb: dict[str, list[float]] = {name: [] for name in servers}
    total: dict[str, list[float]] = {name: [] for name in servers}
    per = max(1, n // rounds)

    def one(name: str) -> tuple[float, float, bytes]:
        c = clients[name]
        t0 = time.perf_counter_ns()
        try:
            with c.stream("POST", PATH, content=body, headers=headers[name]) as r:
                it = r.iter_raw()
                first = next(it, b"")
                t1 = time.perf_counter_ns()
                rest = b"".join(it)
                t2 = time.perf_counter_ns()
                if r.status_code != 200:
                    raise SystemExit(f"{name}: HTTP {r.status_code}: {(first + rest)[:300]!r}")
        except httpx.HTTPError as e:
            raise SystemExit(f"{name}: {e!r}") from e
        return (t1 - t0) / 1e6, (t2 - t0) / 1e6, first + rest

    try:
        for name in clients:
            for _ in range(20):
                _, _, data = one(name)
                if b"[DONE]" not in data:
                    raise SystemExit(f"stream without [DONE]: {data[-300:]!r}")
        for _, order in _rotations(list(servers), rounds):
            for name in order:
                for _ in range(per):
                    a, b, _ = one(name)
                    ttfb[name].append(a)
                    total[name].append(b)
    finally:
        for c in clients.values():
            c.close()
    out: dict[str, Any] = {"requests_per_target": per * rounds, "targets": {}}
    for name in servers:
        row = {
            "ttfb_p50_ms": percentile(ttfb[name], 0.5),
            "ttfb_p99_ms": percentile(ttfb[name], 0.99),
            "total_p50_ms": percentile(total[name], 0.5),
        }
        if "direct" in servers and name != "direct":
            row["added_ttfb_p50_ms"] = row["ttfb_p50_ms"] - percentile(ttfb["direct"], 0.5)
            row["added_total_p50_ms"] = row["total_p50_ms"] - percentile(total["direct"], 0.5)
        out["targets"][name] = row
    return out


# -- load -------------------------------------------------------------------------------------------

_WRK_LUA = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def ensure_wrk() -> str | None:
    """wrk's path; installed with apt-get (Debian package) when missing and possible."""
    found = shutil.which("wrk")
    if found or not shutil.which("apt-get") or os.geteuid() != 0:
        return found
    print("installing wrk with apt-get ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, stdout=subprocess.DEVNULL)
    return shutil.which("wrk")


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class LoadRun:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    client_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_wrk(wrk: str, url: str, conns: int, duration: float, lua: Path) -> LoadRun:
    # --timeout: wrk's default (2 s) would count LiteLLM's slowest answers at 64 connections as errors
    # and leave them out of its latency figures
    argv = [wrk, "-t1", f"-c{conns}", f"-d{duration:g}s", "--timeout", "30s", "--latency", "-s", str(lua)]
    argv.append(url + PATH)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    text = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed: {text}")
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise SystemExit(f"cannot read wrk's output:\n{text}")
    requests, seconds = int(m.group(1)), _ms(m.group(2) + m.group(3)) / 1000.0
    pct = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+(?:us|ms|s|m))\s*$", text, re.M))
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return LoadRun(requests, seconds, errors, _ms(pct["50"]), _ms(pct["99"]), usage.ru_utime + usage.ru_stime)


async def _async_load(
    port: int, conns: int, duration: float, headers: dict[str, str]
) -> tuple[list[float], int]:
    """A minimal HTTP/1.1 keep-alive load client: prebuilt request bytes, Content-Length bodies."""
    body = json.dumps(BODY).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    req = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                else:  # chunked
                    await reader.readuntil(b"0\r\n\r\n")
                lat.append((time.perf_counter() - t0) * 1000.0)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return lat, errors


def run_asyncio(port: int, conns: int, duration: float, headers: dict[str, str]) -> LoadRun:
    before = os.times()
    t0 = time.perf_counter()
    lat, errors = asyncio.run(_async_load(port, conns, duration, headers))
    seconds = time.perf_counter() - t0
    after = os.times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return LoadRun(len(lat), seconds, errors, percentile(lat, 0.5), percentile(lat, 0.99), cpu)


def load(
    servers: dict[str, Server],
    mock: Server,
    conns: int,
    duration: float,
    rounds: int,
    wrk: str | None,
    tmp: Path,
) -> dict[str, Any]:
    luas: dict[str, Path] = {}
    for server in servers.values():
        lua = luas[server.name] = tmp / f"post-{server.name}.lua"
        extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in server.headers.items())
        lua.write_text(_WRK_LUA.format(body=json.dumps(BODY)) + extra)

    def once(server: Server, seconds: float) -> tuple[LoadRun, float, float]:
        cpu0, mock0 = server.cpu_seconds(), mock.cpu_seconds()
        if wrk:
            run = run_wrk(wrk, server.url, conns, seconds, luas[server.name])
        else:
            run = run_asyncio(server.port, conns, seconds, server.headers)
        return run, server.cpu_seconds() - cpu0, mock.cpu_seconds() - mock0

    for s in servers.values():  # warm up at this concurrency (connection pools, lazy setup)
        once(s, min(3.0, duration))
    runs: dict[str, list[tuple[LoadRun, float, float]]] = {name: [] for name in servers}
    for _, order in _rotations(list(servers), rounds):
        for name in order:
            runs[name].append(once(servers[name], duration))
            r, cpu, _ = runs[name][-1]
            if r.errors:
                print(f"  load {name}: {r.errors} errors (non-2xx or socket errors)", flush=True)
            print(
                f"  load {name}: {r.rps:,.0f} rps, p99 {r.p99_ms:.1f} ms, server cpu {cpu:.1f} s", flush=True
            )
    out: dict[str, Any] = {
        "client": "wrk -t1" if wrk else "asyncio (bench/gateway_overhead.py)",
        "connections": conns,
        "duration_s": duration,
        "rounds": rounds,
        "targets": {},
    }
    for name, rs in runs.items():
        out["targets"][name] = {
            "rps": median([r.rps for r, _, _ in rs]),
            "p50_ms": median([r.p50_ms for r, _, _ in rs]),
            "p99_ms": median([r.p99_ms for r, _, _ in rs]),
            # requests per CPU second of the serving process: the rate one core would give it
            "rps_per_core": median([r.requests / cpu for r, cpu, _ in rs if cpu > 0]),
            "server_cpu_cores": median([cpu / r.seconds for r, cpu, _ in rs]),
            "mock_cpu_cores": median([m / r.seconds for r, _, m in rs]),
            "client_cpu_cores": median([r.client_cpu_s / r.seconds for r, _, _ in rs]),
            "errors": sum(r.errors for r, _, _ in rs),
            "runs_rps": [round(r.rps, 1) for r, _, _ in rs],
        }
    return out


# -- report -----------------------------------------------------------------------------------------


def bars(seq: dict[str, Any], stream: dict[str, Any], ld: dict[str, Any] | None) -> dict[str, Any]:
    t = seq["targets"]
    rag, lite = t.get("ragline"), t.get("litellm")
    out: dict[str, Any] = {}
    if rag:
        out["ragline_p50_added_le_0.5ms"] = {
            "value_ms": rag["added_p50_ms"],
            "met": rag["added_p50_ms"] <= 0.5,
        }
        out["ragline_p99_added_le_5ms"] = {"value_ms": rag["added_p99_ms"], "met": rag["added_p99_ms"] <= 5.0}
    if rag and lite:
        limit = lite["added_p50_ms"] / 8
        out["ragline_p50_added_le_litellm_over_8"] = {
            "value_ms": rag["added_p50_ms"],
            "limit_ms": limit,
            "ratio": lite["added_p50_ms"] / rag["added_p50_ms"] if rag["added_p50_ms"] > 0 else None,
            "met": rag["added_p50_ms"] <= limit,
        }
    lt = ld["targets"] if ld else {}
    if "ragline" in lt and "litellm" in lt:
        ratio = lt["ragline"]["rps_per_core"] / lt["litellm"]["rps_per_core"]
        out["ragline_rps_per_core_ge_10x_litellm"] = {"ratio": ratio, "met": ratio >= 10.0}
    # issue 11: auth + rate limits + budgets on
    for name, limit_ms in (("ragline-auth", 0.4), ("ragline-shared", 0.6)):
        if name in t:
            added = t[name]["added_p50_ms"]
            out[f"{name}_p50_added_le_{limit_ms}ms"] = {"value_ms": added, "met": added <= limit_ms}
        for peer in ("litellm-key", "litellm"):
            if name in lt and peer in lt:
                ratio = lt[name]["rps_per_core"] / lt[peer]["rps_per_core"]
                out[f"{name}_rps_per_core_ge_40x_{peer}"] = {"ratio": ratio, "met": ratio >= 40.0}
                break
    return out


def print_table(seq: dict[str, Any], stream: dict[str, Any], ld: dict[str, Any] | None) -> None:
    print(
        f"\n{'target':<15} {'P50 ms':>8} {'P99 ms':>8} {'+P50':>7} {'+P99':>7} {'TTFB':>7} {'+TTFB':>7}"
        f" {'RPS@64':>8} {'RPS/core':>9} {'P99@64':>8} {'CPU ms/req':>10}"
    )
    for name, s in seq["targets"].items():
        st = stream["targets"][name]
        lt = ld["targets"][name] if ld else {}

        def f(v: Any, fmt: str = "7.2f") -> str:
            return format(v, fmt) if isinstance(v, float | int) else "-".rjust(7)

        print(
            f"{name:<15} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {f(s.get('added_p50_ms'))} "
            f"{f(s.get('added_p99_ms'))} {st['ttfb_p50_ms']:>7.2f} {f(st.get('added_ttfb_p50_ms'))} "
            f"{f(lt.get('rps'), '8.0f')} {f(lt.get('rps_per_core'), '9.0f')} {f(lt.get('p99_ms'), '8.1f')}"
            f" {s['server_cpu_ms_per_request']:>10.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="sequential requests per target")
    ap.add_argument("--rounds", type=int, default=20, help="interleaving rounds (sequential, streaming)")
    ap.add_argument("--stream-requests", type=int, default=300, help="streaming requests per target")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    ap.add_argument("--load-rounds", type=int, default=3)
    ap.add_argument("--targets", default=",".join(TARGETS), help="subset of " + ",".join(TARGETS))
    ap.add_argument("--client", choices=["auto", "wrk", "asyncio"], default="auto", help="load client")
    ap.add_argument("--litellm-venv", type=Path, default=DEFAULT_LITELLM_VENV)
    ap.add_argument("--reinstall-litellm", action="store_true", help="run bench/litellm_setup.sh anyway")
    ap.add_argument("--no-load", action="store_true", help="skip the concurrent load phase")
    ap.add_argument("--hold", type=float, default=0.0, help="keep the servers up this long first (profiling)")
    ap.add_argument("--before", type=Path, help="an earlier result JSON to keep as the 'before' figures")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    ap.add_argument(
        "--result-name",
        default="gateway_overhead",
        help="bench/results/NAME.json (a partial run: another name)",
    )
    ap.add_argument(
        "--ragline-before",
        type=Path,
        help="another checkout (e.g. a git worktree of an older commit): adds a 'ragline-before' target "
        "that runs its src/ with this virtualenv, side by side in the same run",
    )
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if any(t not in TARGETS for t in targets):
        raise SystemExit(f"--targets: choose from {', '.join(TARGETS)}")

    wrk = None
    if not args.no_load and args.client != "asyncio":
        wrk = ensure_wrk()
        if wrk is None and args.client == "wrk":
            raise SystemExit("wrk is not installed (apt-get install wrk)")
        if wrk is None:
            print("wrk not available: using the asyncio load client", flush=True)
    wants_litellm = any(t.startswith("litellm") for t in targets)
    venv = litellm_venv(args.litellm_venv, args.reinstall_litellm) if wants_litellm else None

    tmp = Path(tempfile.mkdtemp(prefix="ragline-gw-bench-"))
    load_start = os.getloadavg()[0]
    started: list[Server] = []
    shared = contextlib.ExitStack()
    try:
        mock = start_mock(tmp)
        started.append(mock)
        servers: dict[str, Server] = {}
        if "direct" in targets:
            servers["direct"] = mock
        if "floor" in targets:
            servers["floor"] = start_floor(tmp, mock)
            started.append(servers["floor"])
        if "ragline" in targets:
            servers["ragline"] = start_ragline(tmp, mock)
            started.append(servers["ragline"])
        if args.ragline_before is not None:
            servers["ragline-before"] = start_ragline(tmp, mock, "ragline-before", args.ragline_before)
            started.append(servers["ragline-before"])
            targets.append("ragline-before")
        for name, access in ACCESS_TARGETS.items():
            if name not in targets:
                continue
            store_url = state_url = None
            if access == "shared":
                from tests.services import postgres_server, redis_server  # the suite's real servers

                print("starting PostgreSQL (durable: fsync and synchronous commits on) and Redis ...")
                store_url = shared.enter_context(postgres_server(durable=True))
                state_url = shared.enter_context(redis_server())
            servers[name] = start_ragline(
                tmp, mock, name, access=access, store_url=store_url, state_url=state_url
            )
            started.append(servers[name])
        for name in ("litellm", "litellm-key"):
            if name in targets:
                assert venv is not None
                servers[name] = start_litellm(tmp, mock, venv, name, key=name == "litellm-key")
                started.append(servers[name])
        pids = {n: s.proc.pid for n, s in servers.items()}
        print(f"servers up: {pids} (logs in {tmp}, removed after a successful run)", flush=True)
        if args.hold > 0:
            time.sleep(args.hold)
        print(f"sequential: {args.requests} per target ...", flush=True)
        seq = sequential(servers, args.requests, args.rounds)
        print(f"streaming: {args.stream_requests} per target ...", flush=True)
        stream = streaming(servers, args.stream_requests, args.rounds)
        ld = None
        if not args.no_load:
            print(
                f"load: {args.connections} connections, {args.duration:g} s x {args.load_rounds} ...",
                flush=True,
            )
            ld = load(servers, mock, args.connections, args.duration, args.load_rounds, wrk, tmp)
    finally:
        for s in reversed(started):
            s.stop()
        shared.close()
    shutil.rmtree(tmp, ignore_errors=True)  # the servers' logs and data; kept when the run failed
    print_table(seq, stream, ld)
    result: dict[str, Any] = {
        "targets": targets,
        # 1-minute load average at the start and the end: the machine may be shared
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "litellm_version": litellm_version(venv) if venv else None,
        "litellm_key": PRISMA_OFFLINE if "litellm-key" in targets else None,
        "sequential": seq,
        "streaming": stream,
        "load": ld,
        "bars": bars(seq, stream, ld),
    }
    if "ragline_overhead_header_ms" in seq:
        print(f"x-ragline-overhead-ms: {json.dumps(seq['ragline_overhead_header_ms'])}")
    print("bars:", json.dumps(result["bars"], indent=1))
    if args.before:
        prev = json.loads(args.before.read_text())
        result["before"] = {
            k: prev.get(k) for k in ("git", "date", "sequential", "streaming", "load", "bars")
        }
    if not args.no_write:
        command = "python -m bench.gateway_overhead " + " ".join(sys.argv[1:])
        print(f"wrote {write_result(args.result_name, command.strip(), result)}")
    else:
        out = tmp.parent / (tmp.name + ".json")
        out.write_text(json.dumps(result, indent=2))
        print(f"result (not written to bench/results): {out}")


if __name__ == "__main__":
    main()
