"""Local-model throughput: completion tokens/s in total and per-stream latency at 1, 4 and 16 streams.

    .venv/bin/python -m bench.local_model_throughput [--levels 1,4,16] [--max-tokens 32]
        [--requests-per-stream 2] [--n-parallel N] [--threads 0,1]

Starts a real `ragline serve` (llama.cpp slots = llm.n_parallel, default from the
settings) and, for each concurrency level C, runs C concurrent streaming clients
against /v1/chat/completions, each sending ``--requests-per-stream`` requests back to
back. Reports total completion tokens/s (sum over streams / wall time) and, per
request, time to first token, end-to-end latency and the stream's own decode rate.
``--threads`` runs the whole sweep once per llama.cpp decode thread count (0 = the default,
half the cores; prompt prefill uses every core unless llm.threads_batch says otherwise):
on a machine shared with other work, llama.cpp's spinning worker threads make "all
cores" far slower than one thread. Writes bench/results/local_model_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import median, percentile, write_result
from ragline.config import load_settings

RAGLINE = str(Path(sys.executable).parent / "ragline")
PROMPTS = [
    "Explain in a few sentences how volcanoes form.",
    "Describe a walk through a forest in autumn.",
    "Write a short story about a lighthouse keeper.",
    "List some reasons why people enjoy gardening.",
    "Explain how a bicycle works.",
    "Describe the life cycle of a butterfly.",
    "Write a short poem about the sea.",
    "Explain why the sky is blue.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path, n_parallel: int, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ,
        "RAGLINE_DATA_DIR": str(data_dir),
        "RAGLINE_LLM__N_PARALLEL": str(n_parallel),
        "RAGLINE_LLM__THREADS": str(threads),
    }
    port = _free_port()
    log = (data_dir / "server.log").open("w")
    proc = subprocess.Popen(
        [RAGLINE, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {(data_dir / 'server.log').read_text()[-2000:]}")


async def one_request(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict[str, float]:
    body = {
        "model": "local",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    total = time.perf_counter() - t0
    first = ttft if ttft is not None else total
    decode = (tokens - 1) / (total - first) if tokens > 1 and total > first else float("nan")
    return {"ttft_s": first, "latency_s": total, "tokens": tokens, "stream_tokens_per_s": decode}


async def run_level(base: str, streams: int, per_stream: int, max_tokens: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(base_url=base, timeout=1800, limits=limits) as http:

        async def stream(i: int) -> list[dict[str, float]]:
            out = []
            for k in range(per_stream):
                out.append(await one_request(http, PROMPTS[(i + k) % len(PROMPTS)], max_tokens))
            return out

        t0 = time.perf_counter()
        per = await asyncio.gather(*(stream(i) for i in range(streams)))
        wall = time.perf_counter() - t0
    reqs = [r for rs in per for r in rs]
    tokens = sum(r["tokens"] for r in reqs)
    ttft = [r["ttft_s"] for r in reqs]
    lat = [r["latency_s"] for r in reqs]
    rate = [r["stream_tokens_per_s"] for r in reqs if r["stream_tokens_per_s"] == r["stream_tokens_per_s"]]
    return {
        "streams": streams,
        "requests": len(reqs),
        "wall_s": round(wall, 2),
        "completion_tokens": tokens,
        "throughput_tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": round(median(ttft), 3),
        "ttft_p95_s": round(percentile(ttft, 0.95), 3),
        "latency_p50_s": round(median(lat), 3),
        "latency_p95_s": round(percentile(lat, 0.95), 3),
        "per_stream_tokens_per_s_p50": round(median(rate), 2),
    }


def sweep(levels: list[int], n_parallel: int, threads: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    data = Path(tempfile.mkdtemp(prefix="ragline-bench-llm-"))
    proc, base = start_server(data, n_parallel, threads)
    results = []
    try:
        asyncio.run(run_level(base, 1, 1, 8))  # warm up
        for c in levels:
            res = asyncio.run(run_level(base, c, args.requests_per_stream, args.max_tokens))
            res["load_average_1m"] = round(os.getloadavg()[0], 2)
            results.append(res)
            print(
                f"threads {threads or max(1, (os.cpu_count() or 2) // 2)} · {c:>3} streams: "
                f"{res['throughput_tokens_per_s']:7.1f} tok/s total · "
                f"per stream {res['per_stream_tokens_per_s_p50']:6.1f} tok/s · "
                f"TTFT p50 {res['ttft_p50_s']:.2f} s p95 {res['ttft_p95_s']:.2f} s · "
                f"latency p50 {res['latency_p50_s']:.2f} s p95 {res['latency_p95_s']:.2f} s",
                flush=True,
            )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,4,16", help="comma-separated concurrent stream counts")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--n-parallel", type=int, default=None, help="llama.cpp slots (default: settings)")
    ap.add_argument(
        "--threads", default=None, help="comma-separated llama.cpp thread counts (0 = half the cores)"
    )
    args = ap.parse_args()
    settings = load_settings()
    levels = [int(x) for x in args.levels.split(",")]
    n_parallel = args.n_parallel or settings.llm.n_parallel
    thread_counts = [int(x) for x in args.threads.split(",")] if args.threads else [settings.llm.threads]
    runs = [
        {"llm_threads": t or max(1, (os.cpu_count() or 2) // 2), "levels": sweep(levels, n_parallel, t, args)}
        for t in thread_counts
    ]
    out = write_result(
        "local_model_throughput",
        ".venv/bin/python -m bench.local_model_throughput "
        f"--levels {args.levels} --max-tokens {args.max_tokens} "
        f"--requests-per-stream {args.requests_per_stream} --n-parallel {n_parallel} "
        f"--threads {','.join(str(t) for t in thread_counts)}",
        {
            "model": settings.llm.kind,
            "endpoint": "/v1/chat/completions (stream, include_usage)",
            "n_parallel": n_parallel,
            "max_tokens": args.max_tokens,
            "requests_per_stream": args.requests_per_stream,
            "runs": runs,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
