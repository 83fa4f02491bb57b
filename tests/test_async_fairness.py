"""Async chat jobs on the local model never take every one of its slots from synchronous requests.

llama.cpp serves ``llm.n_parallel`` generations at once; with as many async jobs running as there
are slots, a synchronous chat waited for one of them to finish (tens of seconds for a long job).
Async jobs on the local model now hold at most n_parallel - 1 slots.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from conftest import ragline_process

LONG = {
    "model": "local",
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}],
    "max_tokens": 1500,
    "temperature": 0,
}


def test_a_sync_chat_is_not_starved_by_running_async_jobs(tmp_path: Path) -> None:
    env = {
        "RAGLINE_LLM__N_PARALLEL": "2",
        "RAGLINE_LLM__MAX_TOKENS": "2000",
        "RAGLINE_SERVER__MAX_RUNNING_ASYNC_JOBS": "4",  # more than the slots: the reservation holds anyway
    }
    with ragline_process(tmp_path / "data", env) as (_, base):
        jobs = []
        for _ in range(4):
            r = httpx.post(base + "/v1/async/chat/completions", json=LONG, timeout=30)
            assert r.status_code == 202, r.text
            jobs.append(r.json()["id"])
        time.sleep(1.5)  # the jobs are generating (or waiting for a slot)
        t = time.monotonic()
        r = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "local", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8},
            timeout=120,
        )
        took = time.monotonic() - t
        assert r.status_code == 200, r.text
        states = [httpx.get(f"{base}/v1/jobs/{j}").json()["status"] for j in jobs]
        # no job had to end for the request to get a slot
        assert all(s in ("queued", "running") for s in states), (states, took)
        assert took < 30, f"a sync chat of 8 tokens took {took:.1f} s behind async jobs"
        for j in jobs:
            httpx.post(f"{base}/v1/jobs/{j}/cancel")
