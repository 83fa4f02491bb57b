"""The floor for a Python proxy hop: uvicorn (uvloop, httptools) and a do-nothing pure-ASGI app that
forwards each chat completion to the upstream over pooled keep-alive asyncio streams.

    .venv/bin/python -m bench.floor_proxy --port 9200 --upstream-port 9100

No validation, routing, retries, metrics or error handling: what any Python gateway on
uvicorn pays per request before doing anything. ``bench/gateway_overhead.py`` runs it as the
``floor`` reference row, so a gateway's overhead can be read against what a bare hop costs on
the same (possibly busy) machine. It answers the non-streaming and streaming chat requests
of the benchmark (Content-Length and chunked upstream bodies) and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
_CHUNKED = re.compile(rb"(?i)\r\ntransfer-encoding:\s*chunked")
_TYPE = re.compile(rb"(?i)\r\ncontent-type:\s*([^\r]+)")


def make_app(upstream_port: int) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                done = "lifespan.shutdown" if msg["type"] == "lifespan.shutdown" else "lifespan.startup"
                await send({"type": done + ".complete"})
                if done == "lifespan.shutdown":
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        request = b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n" % (
            scope["path"].encode()
        )
        request += b"content-length: %d\r\n\r\n" % len(body) + body
        while True:
            reused = bool(pool)
            reader, writer = pool.pop() if pool else await asyncio.open_connection("127.0.0.1", upstream_port)
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                if not reused:
                    raise
                # a keep-alive connection the upstream closed while idle: try the next one
        status = int(head[9:12])
        ctype = _TYPE.search(head)
        headers = [(b"content-type", ctype.group(1) if ctype else b"application/json")]
        length = _LENGTH.search(head)
        if length or not _CHUNKED.search(head):
            data = await reader.readexactly(int(length.group(1))) if length else b""
            headers.append((b"content-length", b"%d" % len(data)))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
        else:  # chunked (a stream): pass each chunk on as it comes
            await send({"type": "http.response.start", "status": status, "headers": headers})
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                await send({"type": "http.response.body", "body": data[:-2], "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        pool.append((reader, writer))

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9200)
    ap.add_argument("--upstream-port", type=int, default=9100)
    args = ap.parse_args()
    uvicorn.run(
        make_app(args.upstream_port),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
