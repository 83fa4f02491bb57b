"""Graceful shutdown of a real `ragline serve`: SIGTERM stops accepting, lets in-flight requests
finish up to server.shutdown_timeout_s, cuts off what runs longer, and exits."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ragline_process

#: uvicorn re-raises the signal once its graceful shutdown is done, so the exit status says SIGTERM
GRACEFUL = (0, -signal.SIGTERM)


def _chat(base: str, max_tokens: int, out: dict[str, Any], stream: bool = False) -> None:
    body = {
        "model": "local",
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    try:
        if stream:
            chunks = 0
            with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as r:
                out["status"] = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        chunks += 1
                    out["done"] = line == "data: [DONE]"
            out["chunks"] = chunks
        else:
            r = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
            out["status"] = r.status_code
            out["body"] = r.json()
    except httpx.HTTPError as e:
        out["error"] = type(e).__name__
    out["ended"] = time.monotonic()


def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    env = {"RAGLINE_SERVER__SHUTDOWN_TIMEOUT_S": "30"}
    with ragline_process(tmp_path / "data", env) as (proc, base):
        out: dict[str, Any] = {}
        worker = threading.Thread(target=_chat, args=(base, 48, out))
        worker.start()
        time.sleep(0.5)  # the request is generating
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/health/live", timeout=2)  # no longer accepting
        worker.join(timeout=60)
        assert out.get("status") == 200, out
        assert out["body"]["choices"][0]["message"]["content"]
        assert proc.wait(timeout=30) in GRACEFUL
        assert time.monotonic() - t < 30
    assert "Application shutdown complete" in (tmp_path / "data" / "server.log").read_text()


def test_sigterm_cuts_off_requests_past_the_shutdown_deadline(tmp_path: Path) -> None:
    env = {"RAGLINE_SERVER__SHUTDOWN_TIMEOUT_S": "1", "RAGLINE_LLM__MAX_TOKENS": "4000"}
    with ragline_process(tmp_path / "data", env) as (proc, base):
        out: dict[str, Any] = {}
        worker = threading.Thread(target=_chat, args=(base, 3000, out, True))
        worker.start()
        time.sleep(1.0)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        exited = time.monotonic() - t
        worker.join(timeout=30)
        assert code in GRACEFUL
        assert exited < 10, f"exit took {exited:.1f} s with a 1 s shutdown deadline"
        assert not out.get("done"), "the long stream should have been cut off, not finished"
    assert "Application shutdown complete" in (tmp_path / "data" / "server.log").read_text()


def test_sigterm_cancels_a_running_ingestion_job_and_exits(tmp_path: Path) -> None:
    # a JSON upload of many documents keeps an ingestion job busy for many embedding batches
    docs = [
        {
            "id": f"d{i}",
            "text": " ".join(f"Paragraph {i}.{j} about lighthouses and tides." for j in range(60)),
        }
        for i in range(400)
    ]
    env = {"RAGLINE_SERVER__SHUTDOWN_TIMEOUT_S": "5", "RAGLINE_INGEST__UPSERT_BATCH": "32"}
    with ragline_process(tmp_path / "data", env) as (proc, base):
        r = httpx.post(base + "/v1/collections/big/documents", json={"documents": docs}, timeout=60)
        assert r.status_code in (200, 202), r.text
        job = r.json()
        _wait_running(base, job["id"])
        code, exited = _sigterm(proc)
    assert code in GRACEFUL
    assert exited < 20, f"exit took {exited:.1f} s while a job ran"
    log = (tmp_path / "data" / "server.log").read_text()
    assert "Application shutdown complete" in log


def _wait_running(base: str, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{base}/v1/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _sigterm(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM the server; its exit status and how long it took to exit."""
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    return code, time.monotonic() - t


def test_sigterm_cancels_a_running_async_chat_job_and_exits(tmp_path: Path) -> None:
    # a job generating 3000 tokens runs for minutes: exiting within the deadline means it was stopped
    env = {"RAGLINE_SERVER__SHUTDOWN_TIMEOUT_S": "2", "RAGLINE_LLM__MAX_TOKENS": "4000"}
    with ragline_process(tmp_path / "data", env) as (proc, base):
        body = {
            "model": "local",
            "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
            "max_tokens": 3000,
            "temperature": 0,
        }
        r = httpx.post(base + "/v1/async/chat/completions", json=body, timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        _wait_running(base, job_id)
        time.sleep(1.0)  # generating
        assert httpx.get(f"{base}/v1/jobs/{job_id}").json()["status"] == "running"
        code, exited = _sigterm(proc)
    assert code in GRACEFUL
    assert exited < 12, f"exit took {exited:.1f} s with a 2 s shutdown deadline while a job generated"
    log = (tmp_path / "data" / "server.log").read_text()
    assert "Application shutdown complete" in log
    assert f"1 running jobs cancelling: {job_id}" in log
