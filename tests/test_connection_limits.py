"""Slow and hostile clients against a real `ragline serve` on loopback: heads, timeouts, connections.

Each case was found by a probe of the server (issue: hardening): a 16 MB header and 100,000
headers were accepted, idle and half-sent connections were held forever, and nothing capped the
number of connections. The limits are set low here so the tests run in seconds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ragline_server

LIMITS = {
    "RAGLINE_SERVER__MAX_HEADER_BYTES": "8192",
    "RAGLINE_SERVER__MAX_HEADER_COUNT": "50",
    "RAGLINE_SERVER__HEADER_TIMEOUT_S": "1.0",
    "RAGLINE_SERVER__BODY_TIMEOUT_S": "1.5",
    "RAGLINE_SERVER__KEEPALIVE_TIMEOUT_S": "2.0",  # apart from the header timeout: each is measured
    "RAGLINE_SERVER__MAX_REQUESTS_PER_CONNECTION": "3",
    "RAGLINE_SERVER__MAX_CONNECTIONS": "300",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ragline_server(tmp_path_factory.mktemp("conn") / "data", env=LIMITS) as base:
        yield base


def _addr(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def _connect(base: str) -> socket.socket:
    s = socket.create_connection(_addr(base), timeout=10)
    return s


def _read_all(s: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection."""
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def _head(*headers: str, path: str = "/health/live") -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: x", *headers]) + "\r\n\r\n").encode()


def _live_ms(base: str) -> float:
    t = time.perf_counter()
    r = httpx.get(base + "/health/live", timeout=5)
    assert r.status_code == 200
    return (time.perf_counter() - t) * 1000


def test_oversized_header_gets_431(server: str) -> None:
    with _connect(server) as s:
        s.sendall(_head("X-Big: " + "a" * 20_000))
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_too_many_headers_get_431(server: str) -> None:
    with _connect(server) as s:
        s.sendall(_head(*(f"X-H{i}: v" for i in range(60))))
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_unterminated_huge_header_is_cut_off_without_buffering_it(server: str) -> None:
    # The client's send buffer is pinned small: left to autotune it holds megabytes on loopback
    # (CI once counted 2.6 MB "sent" that sat in kernel buffers while a busy server had long since
    # rejected the head), and those bytes say nothing about what the server buffers.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    s.settimeout(10)
    s.connect(_addr(server))
    with s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Never-Ends: ")
        sent = 0
        with pytest.raises(OSError):  # the server closes the connection long before 16 MB
            while sent < 16 * 1024 * 1024:
                s.sendall(b"a" * 65536)
                sent += 65536
        assert sent < 1024 * 1024


def test_header_within_the_limits_is_served(server: str) -> None:
    with _connect(server) as s:
        s.sendall(_head("X-Fine: " + "a" * 4000, *(f"X-H{i}: v" for i in range(40)), "Connection: close"))
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 200 ")


def test_idle_connection_is_closed_after_the_header_timeout(server: str) -> None:
    with _connect(server) as s:
        t = time.monotonic()
        reply = _read_all(s, timeout=10)
        waited = time.monotonic() - t
    assert reply == b""
    assert 0.8 <= waited < 5


def _read_response(s: socket.socket) -> bytes:
    """One response (head and content-length body) off a connection that stays open."""
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    return head


def test_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(server: str) -> None:
    with _connect(server) as s:
        s.sendall(_head())
        assert _read_response(s).startswith(b"HTTP/1.1 200 ")
        time.sleep(1.2)  # idle past the header timeout (1 s), within the keep-alive timeout (2 s)
        s.sendall(_head())
        assert _read_response(s).startswith(b"HTTP/1.1 200 "), "closed before the keep-alive timeout"
        t = time.monotonic()
        reply = _read_all(s, timeout=10)
        waited = time.monotonic() - t
    assert reply == b""
    assert 1.6 <= waited < 5, f"an idle keep-alive connection was closed after {waited:.1f} s (timeout 2 s)"


def test_half_sent_head_gets_408_after_the_header_timeout(server: str) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        t = time.monotonic()
        reply = _read_all(s, timeout=10)
        waited = time.monotonic() - t
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert waited < 5


def test_slowloris_drip_does_not_extend_the_header_deadline(server: str) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\n")
        t = time.monotonic()
        closed = False
        while time.monotonic() - t < 6:
            try:
                s.sendall(b"X-A: b\r\n")
            except OSError:
                closed = True
                break
            time.sleep(0.2)
    assert closed, "a client dripping header lines kept its connection past the header timeout"


def test_slow_body_is_cut_off_after_the_body_timeout(server: str) -> None:
    with _connect(server) as s:
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 1000\r\n\r\n{"input": "'
        )
        t = time.monotonic()
        _read_all(s, timeout=10)
        waited = time.monotonic() - t
    assert waited < 6


def test_keep_alive_connection_closes_after_max_requests(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        replies = [client.get("/health/live") for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert replies[0].headers.get("connection") != "close"
    assert replies[2].headers.get("connection") == "close"


def test_connection_cap_refuses_extra_connections_and_recovers(tmp_path: Path) -> None:
    env = {**LIMITS, "RAGLINE_SERVER__MAX_CONNECTIONS": "20", "RAGLINE_SERVER__HEADER_TIMEOUT_S": "30"}
    with ragline_server(tmp_path / "data", env=env) as base:
        held = [_connect(base) for _ in range(20)]
        try:
            time.sleep(0.3)
            with _connect(base) as extra:
                extra.sendall(_head())
                reply = _read_all(extra)
            assert reply.startswith(b"HTTP/1.1 503 ") or reply == b""
        finally:
            for s in held:
                s.close()
        time.sleep(0.3)
        assert _live_ms(base) < 1000


def test_health_answers_fast_while_hundreds_of_half_sent_connections_are_open(server: str) -> None:
    held = []
    try:
        for _ in range(200):
            s = _connect(server)
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            held.append(s)
        times = sorted(_live_ms(server) for _ in range(10))
    finally:
        for s in held:
            s.close()
    assert times[len(times) // 2] < 100, times
