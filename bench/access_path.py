"""The access layer's own CPU per model request, without HTTP: what keys, limits and budgets cost.

    .venv/bin/python -m bench.access_path [--requests 3000] [--no-write]

Drives ``AccessControl`` and ``Meter`` the way ``ragline serve`` does for a model request (the
middleware's ``identify`` and requests-limit checks, ``Meter.begin``, the response's
``x-ratelimit-*`` headers, ``Meter.finish``), in a loop, for:

- **embedded**: the SQLite store under a temporary ``data_dir``, in-process counters;
- **shared**: a durable PostgreSQL and a Redis (Debian packages, started on loopback by
  ``tests/services.py``).

A tenant and a key each with a requests and a tokens limit and a monthly budget (far above what the
run uses: every one is checked, none refuses), and a price for the model. CPU time is the process's
(``time.process_time``: the event loop, the SQLite thread and the clients' parsing), per request,
after a warm-up; the batched writes (spend, settlements) are drained inside the timed part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import write_result
from ragline.access import AccessControl, RateDecision
from ragline.config import load_settings
from ragline.server.access_mw import RequestAccess
from ragline.server.metering import Meter

BIG_RATE = "1000000000/minute"
BIG_BUDGET = "1000000"
IP = "127.0.0.1"


async def measure(kind: str, n: int) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {}
        if kind == "shared":
            from tests.services import postgres_server, redis_server

            extra = {
                "store": {"url": stack.enter_context(postgres_server(durable=True))},
                "state": {"url": stack.enter_context(redis_server())},
            }
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ragline-access-bench-")))
        prices = {"models": {"mock": {"input_per_million": 1.0, "output_per_million": 2.0}}}
        ac = AccessControl(load_settings(data_dir=data, prices=prices, **extra))
        await ac.start()
        try:
            limits: dict[str, Any] = {"rate_requests": BIG_RATE, "rate_tokens": BIG_RATE}
            await ac.admin.create_tenant("bench", budget_usd=BIG_BUDGET, period="month", **limits)
            key = (await ac.admin.create_key("bench", budget_usd=BIG_BUDGET, period="month", **limits)).key
            ac.required = True  # what the server sees once a key exists
            meter = Meter(ac, lambda model: ["mock"])

            async def one() -> None:
                p = await ac.identify(key, IP)
                pending = tuple(ac.limiter.checks(p, IP, tokens=False))  # the middleware leaves them
                ra = RequestAccess(p, IP, RateDecision(True), pending=pending)
                ticket = await meter.begin(ra, "mock", 12, 16)
                assert len(ra.rate_headers()) >= 6
                meter.finish(ticket, deployment="mock", prompt_tokens=8, completion_tokens=3)
                await asyncio.sleep(0)

            for _ in range(300):
                await one()
            await meter.drain()
            await ac.recorder.flush()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                await one()
            await meter.drain()
            await ac.recorder.flush()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        finally:
            await ac.close()
    return {"requests": n, "cpu_us_per_request": cpu * 1e6 / n, "wall_us_per_request": wall * 1e6 / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--kinds", default="embedded,shared")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    for kind in args.kinds.split(","):
        out[kind] = asyncio.run(measure(kind, args.requests))
        r = out[kind]
        cpu, wall = r["cpu_us_per_request"], r["wall_us_per_request"]
        print(f"{kind:9} {cpu:7.1f} us CPU, {wall:7.1f} us wall per request")
    if not args.no_write:
        command = "python -m bench.access_path " + " ".join(sys.argv[1:])
        print(f"wrote {write_result('access_path', command.strip(), {'kinds': out})}")


if __name__ == "__main__":
    main()
