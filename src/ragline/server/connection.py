"""Slow and hostile clients: limits on each HTTP connection, on top of uvicorn's httptools protocol.

uvicorn bounds neither the request head (a 16 MB header, 100,000 headers and unterminated headers
were all accepted) nor the time a client may take to send it (idle and half-sent connections were
held forever), nor the number of connections. ``LimitedHttpToolsProtocol`` adds, per connection:

- a cap on the request head: header count and bytes (URL included); over it the client gets a
  431 and the connection is closed, before the head is buffered whole;
- a deadline for the request head, from the moment the connection opens (or the previous response
  ends); a client that has not sent a whole head by then is closed (408);
- a deadline for the request body, from the end of the head; a body not complete by then ends the
  request (the app sees a disconnect) and the connection;
- a cap on requests per keep-alive connection (the last response says ``connection: close``);
- a cap on open connections for the whole server: one over it is answered 503 and closed.

The limits come from ``ServerSettings`` (see ``from_settings``); uvicorn's own
``timeout_keep_alive`` closes idle keep-alive connections between requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ragline.config import ServerSettings


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_requests_per_connection: int = 1000
    max_connections: int = 1024

    @classmethod
    def from_settings(cls, s: ServerSettings) -> ConnectionLimits:
        return cls(
            max_header_bytes=s.max_header_bytes,
            max_header_count=s.max_header_count,
            header_timeout_s=s.header_timeout_s,
            body_timeout_s=s.body_timeout_s,
            max_requests_per_connection=s.max_requests_per_connection,
            max_connections=s.max_connections,
        )


def _plain_response(status: bytes, message: str) -> bytes:
    body = message.encode("ascii")
    return b"".join(
        [
            b"HTTP/1.1 " + status + b"\r\n",
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


_TOO_LARGE = (b"431 Request Header Fields Too Large", "Request header fields too large")


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing (httptools re-raises it as a parser error)."""


def limited_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` that enforces ``limits``."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"LIMITS": limits})


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    LIMITS = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between a message's start (or the connection's) and its last header
        self._head_raw = 0  # bytes received while in the head (bounds an unterminated one)
        self._head_size = 0  # bytes of the URL and the complete headers so far
        self._head_count = 0
        self._requests = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._body_pending = False  # the head is in, the body is not complete yet
        self._rejected = False

    # -- timers ---------------------------------------------------------------------------

    def _arm(self, seconds: float, on_expiry: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, on_expiry)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self._head_raw:  # a half-sent head is told why it is cut off; an idle one is just closed
            self._reject(b"408 Request Timeout", "Request header timeout")
        elif not self.transport.is_closing():
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("request body not complete in %.0f s: closing", self.LIMITS.body_timeout_s)
            self.transport.close()  # the app sees http.disconnect

    def _reject(self, status: bytes, message: str) -> None:
        self._rejected = True
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_plain_response(status, message))
            self.transport.close()

    # -- connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.LIMITS.max_connections:
            self.logger.warning("connection limit (%d) reached", self.LIMITS.max_connections)
            self._reject(b"503 Service Unavailable", "Too many connections")
            return
        self._arm(self.LIMITS.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        super().data_received(data)
        if self._rejected or self.transport.is_closing():
            return
        # Timers are armed only for what is still missing once this chunk is parsed: a request
        # that arrives whole in one read (the usual case) costs no timer at all.
        if self._in_head:
            # an unterminated head is buffered by the parser, and no callback sees it: bound it here
            self._head_raw += len(data)
            if self._head_raw > self.LIMITS.max_header_bytes:
                self._reject(*_TOO_LARGE)
            elif self._deadline is None:
                self._arm(self.LIMITS.header_timeout_s, self._head_timed_out)
        elif self._body_pending and self._deadline is None:
            self._arm(self.LIMITS.body_timeout_s, self._body_timed_out)

    def send_400_response(self, msg: str) -> None:
        if not self._rejected:  # a head over the limits has had its 431 already
            super().send_400_response(msg)

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_size = self._head_count = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4, 1)
        super().on_header(name, value)

    def _count_head(self, size: int, count: int) -> None:
        self._head_size += size
        self._head_count += count
        if self._head_count > self.LIMITS.max_header_count or self._head_size > self.LIMITS.max_header_bytes:
            self._reject(*_TOO_LARGE)
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_raw = 0
        self._requests += 1
        self._disarm()  # the head is in; the body's deadline starts now, if a body is still to come
        self._body_pending = True
        super().on_headers_complete()
        if self._requests >= self.LIMITS.max_requests_per_connection:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._disarm()  # the body is in; the response may take as long as the app needs
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._in_head = True  # what comes next is the next request's head
        super().on_response_complete()
