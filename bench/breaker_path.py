"""The router's own cost per request on a closed and on an open breaker, this checkout beside another.

    .venv/bin/python -m bench.breaker_path [--before PATH] [--calls 20000] [--rounds 7]

What the gateway's request path costs with no network: ``Router.complete`` (built by
``build_router`` as the server builds it, with the shared state the server passes) over a
deployment that answers at once in-process, so the figure is the router's alone:

- ``closed``: model ``m``, one deployment, breaker closed: the hot path;
- ``open``: model ``o``, whose one deployment's breaker is open, falling back to ``m``: a request
  refused by the open breaker and served by the fallback.

Each round runs every checkout in its own process, one after the other (order rotating), so drift
on a shared machine hits them alike; the figure per checkout is the median over rounds of its
mean CPU µs per call (process time: other processes' load disturbs it far less than wall time).
In this checkout the cases also run with the router's fleet detached (``*_unshared``), alternating
block by block in one process: what sharing the breakers adds, apart from any other change.
``--before``: another checkout (e.g. ``git archive <rev> src | tar -x -C DIR``)
whose ``src/`` runs in this virtualenv. Results: bench/results/breaker_path.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import REPO, median, write_result

ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class InstantDeployment:
    """A deployment that answers at once (what is measured is everything around it)."""

    kind = "openai"

    def __init__(self, name: str) -> None:
        self.name, self.model = name, "x"

    async def complete(self, body: dict[str, Any], *, budget: float) -> dict[str, Any]:
        return ANSWER

    async def probe(self, timeout: float) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def _measure(calls: int) -> dict[str, float]:
    from ragline.config import Settings
    from ragline.gateway import build_router
    from ragline.state import InProcessState

    settings = Settings.model_validate(
        {
            "gateway": {
                "deployments": [
                    {"name": d, "base_url": "http://127.0.0.1:9/v1", "model": "x", "health_check": False}
                    for d in ("good", "bad")
                ],
                "models": {"m": {"deployments": ["good"]}, "o": {"deployments": ["bad"], "fallbacks": ["m"]}},
                "breaker": {"cooldown_s": 3600},
            }
        }
    )
    state = InProcessState()
    try:
        router = build_router(settings, lambda: None, state=state)  # type: ignore[arg-type, return-value]
    except TypeError:  # a checkout from before the shared breakers
        router = build_router(settings, lambda: None)  # type: ignore[arg-type, return-value]
    await router.start()
    members = {m.name: m for g in router._groups.values() for m in g.members}
    for m in members.values():
        m.deployment = InstantDeployment(m.name)  # type: ignore[assignment]
    bad = members["bad"].breaker
    while bad.available():
        bad.record_failure()
    fleet = getattr(router, "fleet", None)
    cases = [("closed", "m", fleet), ("open", "o", fleet)]
    if fleet is not None:  # the same code with its fleet detached: what the sharing itself costs
        cases += [("closed_unshared", "m", None), ("open_unshared", "o", None)]
    spent = {case: 0.0 for case, _, _ in cases}
    blocks = 20
    for block in range(blocks + 1):  # block 0 warms up; cases alternate block by block
        for case, model, f in cases:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            if fleet is not None:
                router.fleet = f
            t = time.process_time()
            for _ in range(calls // blocks):
                await router.complete(body)
            if block:
                spent[case] += time.process_time() - t
    out = {case: s / (calls // blocks * blocks) * 1e6 for case, s in spent.items()}
    if fleet is not None:
        router.fleet = fleet
    assert not bad.available()
    await router.aclose()
    return out


def _child(calls: int) -> None:
    print(json.dumps(asyncio.run(_measure(calls))))


def _run(src: Path, calls: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{src / 'src'}{os.pathsep}{REPO}"}
    argv = [sys.executable, "-m", "bench.breaker_path", "--child", "--calls", str(calls)]
    done = subprocess.run(argv, env=env, cwd=REPO, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="another checkout to run beside this one")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.child:
        _child(args.calls)
        return
    checkouts = {"after": REPO}
    if args.before is not None:
        checkouts["before"] = args.before.resolve()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    names = list(checkouts)
    for i in range(args.rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            runs[name].append(_run(checkouts[name], args.calls))
        print(f"round {i + 1}: " + ", ".join(f"{n} {runs[n][-1]}" for n in names), flush=True)
    result: dict[str, Any] = {
        "calls": args.calls,
        "rounds": args.rounds,
        "load_avg_1m": os.getloadavg()[0],
        "us_per_call": {n: {c: median([r[c] for r in runs[n]]) for c in runs[n][0]} for n in names},
        "runs": runs,
    }
    if "before" in runs:
        result["ratio_after_over_before"] = {
            c: result["us_per_call"]["after"][c] / result["us_per_call"]["before"][c]
            for c in ("closed", "open")
        }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if not args.no_write:
        command = "python -m bench.breaker_path " + " ".join(sys.argv[1:])
        print(f"wrote {write_result('breaker_path', command.strip(), result)}")


if __name__ == "__main__":
    main()
