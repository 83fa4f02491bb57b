"""The access-control primitives, measured without HTTP: what each step adds to a request.

    .venv/bin/python -m bench.access_primitives [--n 2000]

Starts a throwaway PostgreSQL and Redis (tests/services.py: Debian packages on loopback) and
measures, on the embedded backends (SQLite + in-process) and the shared ones (PostgreSQL + Redis):

- authenticate: a cached key lookup (the hot path), P50 in microseconds;
- rate limit: one request checked against one per-key requests limit (hit + window stats), per
  ``limits`` strategy: P50 sequential, and hits/s with 64 concurrent callers;
- budget: reserve + settle of one request against a key budget, P50 sequential and
  reservations/s with 64 concurrent callers (settlements are written by the batching spend writer);
- exactness: 100 concurrent reservations against a budget that fits 10; 200 concurrent hits
  on a 60/minute limit;
- revocation: seconds until a second "replica" refuses a revoked key (poll vs pub/sub).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ragline.access import AccessControl, BudgetExceeded, InvalidKey, Limiter
from ragline.access.principal import Principal
from ragline.config import LimitsSettings, load_settings
from services import fresh_database, postgres_server, redis_server

STRATEGIES = ["sliding-window-counter", "moving-window", "fixed-window"]


async def p50_us(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    for _ in range(min(200, n)):
        await fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


async def rate(fn: Callable[[], Awaitable[Any]], n: int, concurrency: int = 64) -> float:
    per = max(1, n // concurrency)

    async def worker() -> None:
        for _ in range(per):
            await fn()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per * concurrency / (time.perf_counter() - t)


async def measure(name: str, overrides: dict[str, Any], n: int) -> None:
    base = {"auth": {"revision_poll_s": 0.5}, "prices": {"models": {"gpt": {"output_per_million": 10}}}}
    ac = AccessControl(load_settings(**base, **overrides), admin_key="x" * 40)
    await ac.start()
    try:
        created = await ac.admin.create_key("default", budget_usd="1000000", period="month")
        p = await ac.auth.authenticate(created.key, None)
        auth = await p50_us(lambda: ac.auth.authenticate(created.key, "10.1.1.1"), n)
        print(f"{name:9} authenticate (cached)           P50 {auth:8.1f} us")
        for strategy in STRATEGIES:
            big = {"requests": "100000000/minute"}
            lim = Limiter(ac.state, LimitsSettings(strategy=strategy, per_key=big))  # type: ignore[arg-type]
            who = Principal(uuid.uuid4().hex[:12], "default", "app")
            lat = await p50_us(lambda lim=lim, who=who: lim.admit(who, None), n)
            rps = await rate(lambda lim=lim, who=who: lim.admit(who, None), n * 2)
            print(f"{name:9} rate limit {strategy:22} P50 {lat:8.1f} us  {rps:9.0f} checks/s (64 callers)")
            sixty = {"requests": "60/minute"}
            exact = Limiter(ac.state, LimitsSettings(strategy=strategy, per_key=sixty))  # type: ignore[arg-type]
            fresh = Principal(uuid.uuid4().hex[:12], "default", "app")
            decisions = await asyncio.gather(*(exact.admit(fresh, None) for _ in range(200)))
            admitted = sum(d.allowed for d in decisions)
            print(f"{name:9}   200 concurrent hits on 60/minute admit {admitted}")

        async def reserve_p50(principal: Principal) -> float:
            """P50 of reserve alone; each request then settles and "calls upstream" for 2 ms (untimed),
            during which the spend writer commits the settlement, as it would in a real request."""
            times = []
            for i in range(n // 2 + 50):
                t = time.perf_counter()
                r = await ac.budgets.reserve(principal, "gpt", 100, 100)
                if i >= 50:
                    times.append(time.perf_counter() - t)
                await asyncio.sleep(0.002)
                ac.budgets.settle(r, deployment="d", prompt_tokens=100, completion_tokens=50)
            return statistics.median(times) * 1e6

        async def reserve_settle() -> None:
            r = await ac.budgets.reserve(p, "gpt", 100, 100)
            ac.budgets.settle(r, deployment="d", prompt_tokens=100, completion_tokens=50)

        lat = await reserve_p50(p)
        rps = await rate(reserve_settle, n * 2)
        await ac.recorder.flush()
        st = ac.recorder.stats
        print(
            f"{name:9} budget reserve (key budget)       P50 {lat:8.1f} us  {rps:9.0f} reserve+settle/s "
            f"(64 callers); {st.settlements_written} settlements written in {st.batches} batches"
        )
        await ac.admin.create_tenant("both", budget_usd="1000000", period="month")
        both = await ac.admin.create_key("both", budget_usd="1000000", period="day")
        pb = await ac.auth.authenticate(both.key, None)
        print(f"{name:9} budget reserve (key+tenant)       P50 {await reserve_p50(pb):8.1f} us")
        tight = await ac.admin.create_key("default", budget_usd="0.01", period="day")  # fits 10 x $0.001
        tp = await ac.auth.authenticate(tight.key, None)

        async def one() -> bool:
            try:
                await ac.budgets.reserve(tp, "gpt", 0, 100)
                return True
            except BudgetExceeded:
                return False

        admitted = sum(await asyncio.gather(*(one() for _ in range(100))))
        print(f"{name:9}   100 concurrent reservations, budget fits 10: {admitted} admitted")
        other = AccessControl(load_settings(**base, **overrides), admin_key="x" * 40)
        await other.start()
        try:
            victim = await ac.admin.create_key("default")
            await other.auth.authenticate(victim.key, None)
            t = time.monotonic()
            await ac.admin.revoke_key(victim.record.key_id)
            while True:
                try:
                    await other.auth.authenticate(victim.key, None)
                except InvalidKey:
                    break
                await asyncio.sleep(0.001)
            print(f"{name:9} revocation seen by another replica after {time.monotonic() - t:.3f} s")
        finally:
            await other.close()
    finally:
        await ac.close()


async def main(n: int) -> None:
    with ExitStack() as stack:
        pg = stack.enter_context(postgres_server())
        redis = stack.enter_context(redis_server())
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        await measure("embedded", {"data_dir": Path(tmp) / "data"}, n)
        shared = {"store": {"url": fresh_database(pg)}, "state": {"url": redis}, "data_dir": Path(tmp) / "d2"}
        await measure("shared", shared, n)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    asyncio.run(main(ap.parse_args().n))
