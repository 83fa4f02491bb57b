"""The shipped nginx configuration (deploy/nginx/ragline.conf) in a real nginx before a real server.

Streams must pass token by token (no buffering), and nginx must refuse what ragline refuses:
oversized bodies and heads, and heads that never finish.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import free_port, ragline_server
from services import debian_binary

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "deploy" / "nginx" / "ragline.conf"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    nginx = debian_binary("nginx", "nginx-light")
    root = tmp_path_factory.mktemp("nginx")
    with ragline_server(root / "data", env={"RAGLINE_LLM__N_PARALLEL": "1"}) as base:
        upstream_port = base.rsplit(":", 1)[1]
        listen = free_port()
        site = CONF.read_text(encoding="utf-8")
        assert "server 127.0.0.1:8000;" in site and "listen 8080;" in site
        site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
        site = site.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
        (root / "ragline.conf").write_text(site, encoding="utf-8")
        for d in ("body", "proxy", "logs"):
            (root / d).mkdir()
        main = f"""
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/proxy;
    uwsgi_temp_path {root}/proxy;
    scgi_temp_path {root}/proxy;
    include {root}/ragline.conf;
}}
"""
        (root / "nginx.conf").write_text(main, encoding="utf-8")
        check = subprocess.run([nginx, "-t", "-c", str(root / "nginx.conf")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen([nginx, "-c", str(root / "nginx.conf")], stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{listen}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(url + "/health/live", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "nginx did not come up"
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_stream_passes_through_token_by_token(proxied: str) -> None:
    body = {
        "model": "local",
        "messages": [{"role": "user", "content": "Count from one to twenty in words."}],
        "max_tokens": 48,
        "stream": True,
    }
    arrivals: list[float] = []
    start = time.monotonic()
    with httpx.stream("POST", proxied + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 10
    # unbuffered: the first chunk arrives well before the last (a buffering proxy delivers all at once)
    assert arrivals[0] < 0.6 * arrivals[-1], arrivals


def test_body_over_the_limit_is_refused_by_nginx(proxied: str) -> None:
    r = httpx.post(
        proxied + "/v1/embeddings",
        content=b"x" * (9 * 1024 * 1024),
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


def test_oversized_head_is_refused_by_nginx(proxied: str) -> None:
    r = httpx.get(proxied + "/health/live", headers={"x-big": "a" * 20_000}, timeout=10)
    assert r.status_code == 400
    r = httpx.get(proxied + "/health/live", headers={"x-ok": "a" * 2_000}, timeout=10)
    assert r.status_code == 200


def test_api_works_through_the_proxy(proxied: str) -> None:
    r = httpx.post(
        proxied + "/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["a", "b"]}, timeout=30
    )
    assert r.status_code == 200
    assert len(r.json()["data"]) == 2
    r = httpx.post(proxied + "/v1/chat/completions", json={"model": "local", "messages": []}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"]


def test_half_sent_head_is_not_held_open(proxied: str) -> None:
    host, port = proxied.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        t = time.monotonic()
        s.settimeout(30)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        waited = time.monotonic() - t
    assert waited < 15  # client_header_timeout 10s
    assert data == b"" or data.startswith(b"HTTP/1.1 408")
