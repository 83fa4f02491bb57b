"""A lean HTTP/1.1 client for upstream calls: a keep-alive connection pool on asyncio, httptools' parser.

Why not httpx: on the hot path of a gateway the HTTP client is most of the work. On the
benchmark machine (docs/BENCHMARKS.md, "Gateway overhead"), a proxy that does nothing but
forward spent 1.1-1.2 ms of CPU per request with httpx's AsyncClient (anyio streams,
httpcore's pool, request/response models) and 0.2 ms with raw asyncio streams; httpx was
about half of ``ragline serve``'s CPU per proxied request. This client costs about as much as
raw streams: one write per request, the C parser uvicorn uses (httptools), one wake-up of the
caller per buffered answer, no per-request objects beyond the response.

It does what the gateway needs and no more: HTTP/1.1 over TCP or TLS, keep-alive with at
most ``max_connections`` per pool (requests beyond it wait for a free connection), bodies
framed by Content-Length, chunked or connection close, gzip/deflate decoding, backpressure
on streamed bodies. No redirects, cookies, proxies or environment lookups (upstreams are
named explicitly). Timeouts are the caller's (``asyncio.timeout``); connecting has its own.

Errors: ``ConnectError`` (refused, unreachable, TLS, connect timeout), ``ConnectionLost``
(closed before the response ended), ``ProtocolError`` (not HTTP). A request whose reused
keep-alive connection turns out to have been closed by the server before any byte of the
response arrived is sent again once on a new connection (the server never saw it).
Closing a response before its end closes its connection, so the server sees the client go.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

#: Streamed body bytes held before reading from the socket pauses (backpressure).
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_EOL = re.compile(rb"\r\n|\r|\n")


class HTTPError(Exception):
    """Base class of this client's errors."""


class ConnectError(HTTPError):
    """No connection: refused, unreachable, TLS handshake failed, or the connect timeout passed."""


class ConnectionLost(HTTPError):
    """The connection closed before the response was complete."""


class ProtocolError(HTTPError):
    """The server did not answer with valid HTTP/1.1."""


class Response:
    """One response: status and headers at once, the body as it arrives.

    Read it with ``read()`` (the whole body) or ``aiter_bytes()`` / ``aiter_lines()``;
    always end with ``aclose()`` (a no-op after a complete read; before the end it closes
    the connection).
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_decoder",
        "_done",
        "_error",
        "_head",
        "_header_list",
        "_waiter",
        "_whole",
        "headers",
        "received",
        "status",
    )

    def __init__(self, conn: _Connection, whole: bool = False) -> None:
        self._conn: _Connection | None = conn
        #: Read whole before the caller resumes: no backpressure, no wake-up at the headers.
        self._whole = whole
        self.status = 0
        #: Header names in lower case; repeated headers joined with ", ".
        self.headers: dict[str, str] = {}
        self._header_list: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._head = False
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: Any = None
        #: Whether any byte of the response arrived (a stale keep-alive connection sends none).
        self.received = False

    # -- fed by the connection ---------------------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _headers_complete(self, status: int) -> None:
        self.status = status
        headers = self.headers
        for raw_name, raw_value in self._header_list:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._header_list.clear()
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        self._head = True
        if not self._whole:
            self._wake()

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as e:
                self._fail(ProtocolError(f"bad {self.headers.get('content-encoding')} body: {e}"))
                return
            if not data:
                return
        self._chunks.append(data)
        if self._whole:
            return
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            with contextlib.suppress(zlib.error):
                rest = self._decoder.flush()
                if rest:
                    self._chunks.append(rest)
        self._done = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._done = True
            self._wake()

    # -- read by the caller ------------------------------------------------------------------

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _wait_head(self) -> None:
        while not self._head:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def _wait_done(self) -> None:
        while not self._done:
            await self._wait()
        if self._error is not None:
            raise self._error

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        while not self._done:
            await self._wait()
        if self._error is not None:
            raise self._error
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._release()
        return body

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._buffered < _LOW_WATER and self._conn is not None:
                    self._conn.resume()
                yield data
            if self._done:
                if self._error is not None:
                    raise self._error
                self._release()
                return
            await self._wait()

    async def aiter_lines(self) -> AsyncIterator[str]:
        """Lines without their endings (``\\r\\n``, ``\\n`` or ``\\r``, as SSE defines them), as UTF-8 text.

        Split on bytes before decoding: a line break never sits inside a UTF-8 sequence, so
        characters split across chunks come out whole.
        """
        buf = b""
        async for data in self.aiter_bytes():
            buf = buf + data if buf else data
            pos = 0
            for m in _EOL.finditer(buf):
                if m.end() == len(buf) and m.group() == b"\r":
                    break  # maybe the first half of "\r\n": wait for the next chunk
                yield buf[pos : m.start()].decode("utf-8", "replace")
                pos = m.end()
            buf = buf[pos:]
        if buf:
            yield (buf[:-1] if buf.endswith(b"\r") else buf).decode("utf-8", "replace")

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finished(self)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._error is None:
            conn.finished(self)
        else:
            conn.close()  # the rest of the body is not wanted: the server sees the client go away


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; at most one request in flight."""

    def __init__(self, pool: ConnectionPool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.reused = False
        self._paused = False
        self._keep_alive = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:  # nothing asked: a server speaking out of turn
            self.close()
            return
        resp.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            resp._fail(ProtocolError(f"invalid HTTP response: {e}"))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost ends the response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.response
        if resp is not None and not resp._done:
            if resp._head and _until_close(resp):
                resp._finish()  # a body framed by the end of the connection
            else:
                why = f": {exc}" if exc else ""
                resp._fail(ConnectionLost(f"the server closed the connection before the response ended{why}"))
        self._pool._closed(self)

    def pause_writing(self) -> None:  # large request bodies: the transport buffers them
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        resp = self.response
        if resp is not None:
            status = self._parser.get_status_code()
            if 100 <= status < 200:  # an interim response (100 Continue): the real one follows
                resp._header_list.clear()
                return
            self._keep_alive = self._parser.should_keep_alive()  # read here: the parser resets at the end
            resp._headers_complete(status)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        resp = self.response
        if resp is not None and resp._head:
            resp._finish()

    # -- the pool's side ---------------------------------------------------------------------

    def send(self, data: bytes, whole: bool = False) -> Response:
        assert self.transport is not None
        self.response = resp = Response(self, whole)
        self.transport.write(data)
        return resp

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def finished(self, resp: Response) -> None:
        """The response was read to its end: keep the connection for the next request, or close it."""
        if self.response is not resp:
            return
        self.response = None
        self.resume()
        if self.closed or not self._keep_alive:
            self.close()
        else:
            self._pool._idle_again(self)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
            # connection_lost follows on the loop; until then the pool counts the connection as closing
        elif self.transport is None:
            self.closed = True


def _until_close(resp: Response) -> bool:
    h = resp.headers
    return "content-length" not in h and "chunked" not in h.get("transfer-encoding", "").lower()


class ConnectionPool:
    """Keep-alive connections to one origin (scheme, host, port), at most ``max_connections``."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 100,
        connect_timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl_context or _default_ssl_context()
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        host_header = self.host if url.port is None else f"{self.host}:{self.port}"
        if ":" in self.host:  # IPv6 literal
            host_header = f"[{self.host}]" if url.port is None else f"[{self.host}]:{self.port}"
        lines = [f"host: {host_header}", "user-agent: ragline"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._static_headers = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: list[_Connection] = []
        self._count = 0  # connections open or opening
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._all: set[_Connection] = set()
        self._closing = False

    # -- requests ----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send a request; return once the status and headers are in. The caller reads the body, then
        closes the response (``aclose``)."""
        return await self._exchange(self._encode(method, path, body, content_type, headers), whole=False)

    async def fetch(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send a request and read the whole response: (status, headers, body).

        The caller is resumed once, when the response is complete (not at its headers and again
        at its body), and the connection is back in the pool by then.
        """
        resp = await self._exchange(self._encode(method, path, body, content_type, headers), whole=True)
        data = b"".join(resp._chunks)
        resp._chunks.clear()
        resp._release()
        return resp.status, resp.headers, data

    def _encode(
        self,
        method: str,
        path: str,
        body: bytes | None,
        content_type: str | None,
        headers: Mapping[str, str] | None,
    ) -> bytes:
        target = self.prefix + "/" + path.lstrip("/")
        head = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), self._static_headers]
        if headers:
            head.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1"))
        if body is not None:
            if content_type:
                head.append(f"content-type: {content_type}\r\n".encode("latin-1"))
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"\r\n")
        if body:
            head.append(body)
        return b"".join(head)

    async def _exchange(self, data: bytes, *, whole: bool) -> Response:
        for attempt in (0, 1):
            conn = await self._acquire()
            resp = conn.send(data, whole)
            try:
                await (resp._wait_done() if whole else resp._wait_head())
            except ConnectionLost:
                conn.close()
                if attempt == 0 and conn.reused and not resp.received:
                    continue  # a keep-alive connection the server had closed: it never saw the request
                raise
            except BaseException:
                conn.close()
                raise
            return resp
        raise AssertionError("unreachable")

    # -- connections -------------------------------------------------------------------------

    async def _acquire(self) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            while self._idle:
                conn = self._idle.pop()
                if conn.closed:
                    continue
                if conn.loop is not loop:  # left over from another event loop: unusable here
                    self._forget(conn)
                    continue
                conn.reused = True
                return conn
            if self._count < self.max_connections:
                self._count += 1
                try:
                    return await self._connect(loop)
                except BaseException:
                    self._count -= 1
                    self._wake_one()
                    raise
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the wake-up on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, proto = await loop.create_connection(
                    lambda: _Connection(self, loop),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError as e:
            raise ConnectError(f"connect timed out after {self.connect_timeout:g} s") from e
        except (OSError, ssl.SSLError) as e:
            raise ConnectError(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
        conn = proto
        self._all.add(conn)
        return conn

    def _idle_again(self, conn: _Connection) -> None:
        if self._closing:
            conn.close()
            return
        self._idle.append(conn)
        self._wake_one()

    def _closed(self, conn: _Connection) -> None:
        if conn in self._all:
            self._forget(conn)
            self._wake_one()

    def _forget(self, conn: _Connection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            self._count -= 1
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def _wake_one(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def aclose(self) -> None:
        self._closing = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in list(self._all):
            if conn.response is None:
                conn.close()


_SSL: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    """Certificate-verifying TLS: certifi's CA bundle when installed (as httpx did), else the system's."""
    global _SSL
    if _SSL is None:
        try:
            import certifi

            _SSL = ssl.create_default_context(cafile=certifi.where())
        except ImportError:
            _SSL = ssl.create_default_context()
    return _SSL
