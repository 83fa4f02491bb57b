"""The hardening probe, replayed in sequence against one real server with the shipped defaults.

Each probe is a case the probe of the server found (issue: hardening). While each one runs,
`/health/live` is polled: the server must keep answering within 100 ms. After all of them the
server's resident memory must be back within 10% of where it was before them, and no request
may have got a 500.
"""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ragline_process
from test_hardening_ingest import _job, _rss, _upload, docx_bomb, pdf_repeated_page

pytestmark = pytest.mark.slow

EMBED = "all-MiniLM-L6-v2"
Probe = Callable[[str, Path], None]
STATUSES: list[int] = []


def _post(base: str, path: str, body: Any = None, content: bytes | None = None, timeout: float = 120) -> int:
    if content is not None:
        r = httpx.post(
            base + path, content=content, headers={"content-type": "application/json"}, timeout=timeout
        )
    else:
        r = httpx.post(base + path, json=body, timeout=timeout)
    STATUSES.append(r.status_code)
    return r.status_code


def probe_embedding_flood(base: str, _: Path) -> None:
    # 80,000 one-letter inputs (320 KB): 45 s and +1.4 GB before; now refused at once
    assert _post(base, "/v1/embeddings", {"model": EMBED, "input": ["a"] * 80_000}) == 400


def probe_largest_allowed_embedding_request(base: str, _: Path) -> None:
    assert _post(base, "/v1/embeddings", {"model": EMBED, "input": ["glacier lake"] * 2048}) == 200


def probe_nested_json(base: str, _: Path) -> None:
    assert _post(base, "/v1/chat/completions", content=b"[" * 3000) == 400
    assert (
        _post(base, "/v1/chat/completions", content=b'{"model": "local", "messages": ' + b"[" * 3000) == 400
    )


def probe_huge_chat_requests(base: str, _: Path) -> None:
    many = [{"role": "user", "content": "hi"}] * 5000
    assert _post(base, "/v1/chat/completions", {"model": "local", "messages": many}) == 400
    body = {"model": "rag/probe", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2**31 - 1}
    assert _post(base, "/v1/chat/completions", body) in (400, 404)
    body = {"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2**31 - 1}
    assert _post(base, "/v1/chat/completions", body) == 400


def probe_docx_bomb(base: str, tmp: Path) -> None:
    r = _upload(base, "probe", b"bomb.docx", (tmp / "bomb.docx").read_bytes())
    STATUSES.append(r.status_code)
    assert _job(base, r.json())["status"] == "failed"


def probe_pdf_repeating_one_page(base: str, tmp: Path) -> None:
    r = _upload(base, "probe", b"repeat.pdf", (tmp / "repeat.pdf").read_bytes())
    STATUSES.append(r.status_code)
    assert _job(base, r.json())["status"] == "succeeded"


def probe_bad_names(base: str, _: Path) -> None:
    for name in (b"a" * 300 + b".txt", b"nul\x00.txt"):
        r = _upload(base, "probe", name, b"text")
        STATUSES.append(r.status_code)
        assert r.status_code == 400
    r = httpx.post(base + "/v1/collections/kb%0A/search", json={"query": "x"}, timeout=30)
    STATUSES.append(r.status_code)
    assert r.status_code in (400, 404)


def probe_async_job_flood(base: str, _: Path) -> None:
    extra = "x" * (2 * 1024 * 1024)
    for _i in range(20):
        body = {"model": "local", "messages": [{"role": "user", "content": "hi"}], "metadata": {"x": extra}}
        assert _post(base, "/v1/async/chat/completions", body) in (400, 413, 429)


def probe_header_flood(base: str, _: Path) -> None:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with pytest.raises(OSError):
            for _i in range(256):  # 16 MB
                s.sendall(b"a" * 65536)


def probe_idle_connections(base: str, _: Path) -> None:
    host, port = base.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(300)]
    time.sleep(1.0)
    for s in held:
        s.close()


PROBES: list[Probe] = [
    probe_embedding_flood,
    probe_largest_allowed_embedding_request,
    probe_nested_json,
    probe_huge_chat_requests,
    probe_docx_bomb,
    probe_pdf_repeating_one_page,
    probe_bad_names,
    probe_async_job_flood,
    probe_header_flood,
    probe_idle_connections,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with ragline_process(tmp_path_factory.mktemp("probe") / "data") as (proc, base):
        yield base, proc.pid


def _while_polling_health(base: str, work: Callable[[], None]) -> list[float]:
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=run)
    latencies: list[float] = []
    with httpx.Client(base_url=base, timeout=5) as client:
        thread.start()
        while not done.wait(0.05):
            t = time.perf_counter()
            assert client.get("/health/live").status_code == 200
            latencies.append((time.perf_counter() - t) * 1000)
    thread.join()
    if errors:
        raise errors[0]
    return latencies


def _warm_up(base: str, tmp: Path) -> None:
    (tmp / "warm.md").write_text("# Warm\n\nGlaciers carve valleys over thousands of years.\n")
    r = _upload(base, "warm", b"warm.md", (tmp / "warm.md").read_bytes())
    assert _job(base, r.json())["status"] == "succeeded"
    for _ in range(3):
        assert _post(base, "/v1/embeddings", {"model": EMBED, "input": ["glacier"] * 64}) == 200
        body = {"model": "local", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
        assert _post(base, "/v1/chat/completions", body) == 200
        body = {"model": "rag/warm", "messages": [{"role": "user", "content": "What do glaciers carve?"}]}
        assert _post(base, "/v1/chat/completions", body) == 200


def test_probes_in_sequence_keep_health_fast_memory_flat_and_no_500(
    server: tuple[str, int], tmp_path: Path
) -> None:
    base, pid = server
    # the hostile files are built first: building them costs the test process CPU the server needs
    docx_bomb(tmp_path / "bomb.docx", 1 << 30)  # 1 MB on disk, 1 GB inflated
    (tmp_path / "repeat.pdf").write_bytes(pdf_repeated_page(20_000))
    _warm_up(base, tmp_path)
    time.sleep(1.0)
    before = _rss(pid)
    slow: dict[str, list[float]] = {}
    for probe in PROBES:
        latencies = _while_polling_health(base, functools.partial(probe, base, tmp_path))
        if latencies and max(latencies) > 100:
            # once more: on a 2-core machine a neighbour's burst can delay one poll; the stalls this
            # guards against (seconds, on every run) show up again on the second try
            latencies = _while_polling_health(base, functools.partial(probe, base, tmp_path))
        if latencies and max(latencies) > 100:
            slow[probe.__name__] = sorted(latencies)[-3:]
    time.sleep(2.0)
    after = _rss(pid)
    report = json.dumps({"rss_before_mb": before >> 20, "rss_after_mb": after >> 20, "slow": slow})
    print(report)
    assert not [s for s in STATUSES if s >= 500], STATUSES
    assert not slow, f"/health/live took over 100 ms while these probes ran: {report}"
    assert after <= before * 1.10, f"RSS did not return within 10%: {report}"
