"""The gateway's upstream HTTP client (``ragline.gateway.httpclient``) and the server's fast path.

The client is driven against scripted raw-socket servers on loopback, so each framing and
failure case is exact: Content-Length, chunked and close-delimited bodies, gzip, line breaks
split across packets, keep-alive reuse, a keep-alive connection the server closed, the pool
limit, connect errors. The fast path is checked against the FastAPI route it bypasses:
same answers, same errors.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragline.config import load_settings
from ragline.engine import Engine
from ragline.gateway import codec, httpclient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"


def _keep_alive(responses: Callable[[bytes], list[bytes]], log: list[bytes]) -> Handler:
    """Answer every request on the connection with the packets ``responses(request)`` gives."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await _read_request(reader)
            log.append(request)
            for packet in responses(request):
                writer.write(packet)
                await writer.drain()
                await asyncio.sleep(0.001)  # separate packets

    return handler


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def _body(resp: httpclient.Response) -> bytes:
    try:
        return await resp.read()
    finally:
        await resp.aclose()


async def test_content_length_keep_alive_and_request_shape() -> None:
    log: list[bytes] = []
    async with Server(_keep_alive(lambda _: [_ok(b'{"a":1}')], log)) as srv:
        pool = httpclient.ConnectionPool(srv.url, headers={"authorization": "Bearer k"})
        for _ in range(3):
            resp = await pool.request("POST", "chat/completions", b'{"x":1}', content_type="application/json")
            assert resp.status == 200 and await _body(resp) == b'{"a":1}'
        for _ in range(2):
            got = await pool.fetch("POST", "chat/completions", b'{"x":1}', content_type="application/json")
            assert got == (200, {"content-length": "7"}, b'{"a":1}')
        await pool.aclose()
    assert srv.connections == 1  # one connection, reused
    head, body = log[0].split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert {b"authorization: Bearer k", b"content-type: application/json", b"content-length: 7"} <= set(lines)
    assert any(line.startswith(b"host: 127.0.0.1:") for line in lines)
    assert body == b'{"x":1}'


async def test_chunked_sse_lines_split_anywhere() -> None:
    text = 'data: {"t":"h\u00e9llo \u2028 w\u00f6rld"}\r\n\r\ndata: [DONE]\n\n'.encode()
    # every split point: line breaks, \r|\n pairs and UTF-8 sequences cut between packets
    for cut in range(1, len(text)):
        parts = [text[:cut], text[cut:]]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        packets = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", chunked[:7], chunked[7:]]
        async with Server(_keep_alive(lambda _, p=packets: p, [])) as srv:
            pool = httpclient.ConnectionPool(srv.url)
            resp = await pool.request("POST", "chat/completions", b"{}")
            lines = [line async for line in resp.aiter_lines()]
            await resp.aclose()
            await pool.aclose()
        assert lines == ['data: {"t":"h\u00e9llo \u2028 w\u00f6rld"}', "", "data: [DONE]", ""], cut


async def test_close_delimited_and_gzip_bodies() -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nthe body ")
        await writer.drain()
        writer.write(b"until close")
        await writer.drain()

    async with Server(close_delimited) as srv:
        pool = httpclient.ConnectionPool(srv.url)
        assert await _body(await pool.request("GET", "models")) == b"the body until close"
        await pool.aclose()

    payload = json.dumps({"choices": ["x" * 1000]}).encode()
    packed = gzip.compress(payload)
    async with Server(_keep_alive(lambda _: [_ok(packed, b"content-encoding: gzip\r\n")], [])) as srv:
        pool = httpclient.ConnectionPool(srv.url)
        assert await _body(await pool.request("GET", "models")) == payload
        await pool.aclose()


async def test_stale_keep_alive_connection_is_retried_once_on_a_new_one() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_ok(b"first"))
        await writer.drain()
        # the server drops the idle connection while the client still holds it as reusable
        await reader.readuntil(b"\r\n\r\n")

    async with Server(one_then_close) as srv:
        pool = httpclient.ConnectionPool(srv.url)
        assert await _body(await pool.request("GET", "models")) == b"first"
        assert await _body(await pool.request("GET", "models")) == b"first"
        assert await pool.fetch("GET", "models") == (200, {"content-length": "5"}, b"first")
        await pool.aclose()
    assert srv.connections == 3


async def test_lost_connection_mid_body_and_not_http() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()

    async with Server(cut) as srv:
        pool = httpclient.ConnectionPool(srv.url)
        resp = await pool.request("GET", "models")
        with pytest.raises(httpclient.ConnectionLost):
            await resp.read()
        await resp.aclose()
        await pool.aclose()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async with Server(garbage) as srv:
        pool = httpclient.ConnectionPool(srv.url)
        with pytest.raises(httpclient.ProtocolError):
            await pool.request("GET", "models")
        await pool.aclose()


async def test_pool_limit_queues_requests_and_connect_errors() -> None:
    in_flight = 0
    peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, peak
        while True:
            await _read_request(reader)
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1
            writer.write(_ok(b"ok"))
            await writer.drain()

    async with Server(slow) as srv:
        pool = httpclient.ConnectionPool(srv.url, max_connections=2)

        async def one() -> bytes:
            return await _body(await pool.request("GET", "models"))

        assert await asyncio.gather(*(one() for _ in range(8))) == [b"ok"] * 8
        await pool.aclose()
    assert peak == 2 and srv.connections == 2

    pool = httpclient.ConnectionPool("http://127.0.0.1:9/v1", connect_timeout=2)
    with pytest.raises(httpclient.ConnectError):
        await pool.request("GET", "models")


async def test_closing_a_stream_early_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"6\r\ndata: \r\n")
                await writer.drain()
                await asyncio.sleep(0.005)
                if reader.at_eof():
                    break
        finally:
            closed.set()

    async with Server(endless) as srv:
        pool = httpclient.ConnectionPool(srv.url)
        resp = await pool.request("POST", "chat/completions", b"{}")
        async for _ in resp.aiter_bytes():
            break
        await resp.aclose()
        await asyncio.wait_for(closed.wait(), 5)
        await pool.aclose()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for a test certificate")
async def test_tls_with_certificate_verification(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    req = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    req += ["-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(req, check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            writer.write(_ok(b"secure"))
            await writer.drain()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        pool = httpclient.ConnectionPool(f"https://localhost:{port}/v1", ssl_context=trusted)
        for _ in range(2):  # the second request reuses the TLS connection
            assert await pool.fetch("GET", "models") == (200, {"content-length": "6"}, b"secure")
        await pool.aclose()
        untrusted = httpclient.ConnectionPool(f"https://localhost:{port}/v1")  # default CAs: refused
        with pytest.raises(httpclient.ConnectError):
            await untrusted.fetch("GET", "models")
    finally:
        server.close()


def test_codec_falls_back_where_orjson_refuses() -> None:
    assert math.isnan(codec.loads(b'{"a": NaN}')["a"])  # as json reads it
    assert codec.loads(codec.dumps({"big": 2**70})) == {"big": 2**70}
    with pytest.raises(ValueError):
        codec.loads(b"{not json")


# -- the server's fast path ------------------------------------------------------------------


@pytest.fixture
async def served(tmp_path: Any) -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    """ragline's app (in process) with a gateway model ``gw`` whose upstream is faked."""
    upstream = f"http://127.0.0.1:{_free_port()}/v1"
    settings = load_settings(
        data_dir=tmp_path,
        gateway={
            "deployments": [{"name": "up", "base_url": upstream, "model": "up-model", "health_check": False}],
            "models": {"gw": {"deployments": ["up"]}},
        },
    )
    from ragline.server.app import create_app

    app = create_app(Engine(settings))
    seen: list[dict[str, Any]] = []
    deployment = app.state.ragline.gateway._deployments[0]

    async def complete(body: dict[str, Any], *, budget: float) -> dict[str, Any]:
        seen.append(body)
        return {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    async def stream(body: dict[str, Any], *, budget: float) -> AsyncIterator[dict[str, Any]]:
        seen.append(body)
        base = {"id": "x", "object": "chat.completion.chunk", "model": body["model"]}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        for word in ("hel", "lo"):
            yield {**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        if (body.get("stream_options") or {}).get("include_usage"):
            yield {
                **base,
                "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            }

    deployment.complete = complete
    deployment.stream = stream
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),  # the app's startup: access control opens its store
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client, seen


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_fast_path_answers_like_the_route(
    served: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    client, seen = served
    tools = [{"type": "function", "function": {"name": "f"}}]
    body = {"model": "gw", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "up-model" and r.headers["content-type"] == "application/json"
    assert "x-ragline-overhead-ms" in r.headers  # the metrics middleware still wraps it
    assert seen[-1] == {**body, "model": "up-model"}
    # a JSON content type the fast path leaves to FastAPI: the route gives the same answer
    r2 = await client.post(
        "/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/vnd.x+json"}
    )
    assert r2.status_code == 200 and r2.json() == r.json()
    assert len(seen) == 2 and seen[-1] == seen[0]
    metrics = (await client.get("/metrics")).text
    assert 'route="/v1/chat/completions"' in metrics


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"model": "gw", "messages": []}', 400, "messages"),
        (b'{"model": "gw", "messages": [{"role": "user", "content": "hi"}], "n": 0}', 400, "n"),
        (b'{"model": "gw", "messages": [{"role": "user", "content": "x"}], "rag": {}}', 400, "rag"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, ""),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "nope"),
    ],
)
async def test_fast_path_leaves_errors_to_the_route(
    served: tuple[httpx.AsyncClient, list[dict[str, Any]]], body: bytes, status: int, fragment: str
) -> None:
    client, seen = served
    r = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]
    assert not seen


async def test_fast_path_streams_like_the_route(
    served: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    client, seen = served
    body = {"model": "gw", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    answers = []
    for ctype in ("application/json", "application/vnd.x+json"):  # the fast path, then the FastAPI route
        r = await client.post(
            "/v1/chat/completions", content=json.dumps(body), headers={"content-type": ctype}
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        answers.append([json.loads(e) for e in events[:-1]])
    assert answers[0] == answers[1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in answers[0] if c["choices"])
    assert text == "hello" and not any(c.get("usage") for c in answers[0])  # usage only when asked
    # usage is asked upstream anyway (for the token metrics)
    assert seen[0]["stream_options"] == {"include_usage": True} and seen[0]["model"] == "up-model"
