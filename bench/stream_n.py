"""n choices on the local model: one request with n=2, streamed and not, against two n=1 streams
back to back, all on the same real `ragline serve` (llm.n_parallel=2), side by side in one run.

    .venv/bin/python -m bench.stream_n [--rounds 5] [--max-tokens 32] [--threads 1]

Each round runs, in turn: a streamed n=2 request, the same non-streamed, two streamed n=1
requests one after the other and the same two at once (seeds s and s+1: the same two
generations as the n=2 choices).
Reports per way the median wall time, time to the first content token, completion tokens
(from the usage) and completion tokens/s. Writes bench/results/stream_n.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench._common import median, write_result
from bench.local_model_throughput import start_server

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def streamed(http: httpx.Client, n: int, seed: int, max_tokens: int) -> dict[str, float]:
    body = {
        "model": "local",
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "n": n,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first: float | None = None
    tokens = 0
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk.get("choices") or []):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    total = time.perf_counter() - t0
    return {"wall_s": total, "ttft_s": first if first is not None else total, "tokens": tokens}


def whole(http: httpx.Client, n: int, seed: int, max_tokens: int) -> dict[str, float]:
    body = {
        "model": "local",
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "n": n,
    }
    t0 = time.perf_counter()
    r = http.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    total = time.perf_counter() - t0
    return {"wall_s": total, "ttft_s": total, "tokens": int(r.json()["usage"]["completion_tokens"])}


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    wall = median([r["wall_s"] for r in runs])
    tokens = median([r["tokens"] for r in runs])
    return {
        "wall_s_median": round(wall, 3),
        "ttft_s_median": round(median([r["ttft_s"] for r in runs]), 3),
        "completion_tokens_median": tokens,
        "tokens_per_s": round(sum(r["tokens"] for r in runs) / sum(r["wall_s"] for r in runs), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    ways: dict[str, list[dict[str, float]]] = {
        "n2_streamed": [],
        "n2_not_streamed": [],
        "two_n1_streams": [],
        "two_n1_streams_at_once": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(Path(tmp), 2, args.threads)
        try:
            with httpx.Client(base_url=base, timeout=600) as http:
                streamed(http, 2, 0, 4)  # warm-up
                for k in range(args.rounds):
                    seed = 100 + 2 * k
                    ways["n2_streamed"].append(streamed(http, 2, seed, args.max_tokens))
                    ways["n2_not_streamed"].append(whole(http, 2, seed, args.max_tokens))
                    a, b = (streamed(http, 1, seed + i, args.max_tokens) for i in range(2))
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(2) as pool:
                        pair = list(
                            pool.map(lambda s: streamed(http, 1, s, args.max_tokens), (seed, seed + 1))
                        )
                    ways["two_n1_streams_at_once"].append(
                        {
                            "wall_s": time.perf_counter() - t0,
                            "ttft_s": min(r["ttft_s"] for r in pair),
                            "tokens": sum(r["tokens"] for r in pair),
                        }
                    )
                    ways["two_n1_streams"].append(
                        {
                            "wall_s": a["wall_s"] + b["wall_s"],
                            "ttft_s": a["ttft_s"],
                            "tokens": a["tokens"] + b["tokens"],
                        }
                    )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result: dict[str, Any] = {
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "llm_threads": args.threads,
        "n_parallel": 2,
        "load_average_1m": round(os.getloadavg()[0], 2),  # the machine is shared: how busy it was
        **{way: summary(runs) for way, runs in ways.items()},
    }
    command = (
        f".venv/bin/python -m bench.stream_n --rounds {args.rounds} --max-tokens {args.max_tokens} "
        f"--threads {args.threads}"
    )
    path = write_result("stream_n", command, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
