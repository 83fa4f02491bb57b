"""Every error the suite's HTTP clients receive, checked for what must never leak.

conftest.py wraps ``Client.send`` and ``AsyncClient.send`` of httpx and of httpx2 (the fork the
official openai client is built on) for the whole session and records

- each response with a status of 400 or more (a streamed one when the client has read it: the
  openai client streams every response);
- the ``error`` of a job in a 2xx answer under ``/v1/jobs`` (a failed or cancelled job's reason);
- each error event (a ``data:`` line with an ``"error"``) inside a server-sent event stream.

tests/test_zz_error_leaks.py, which runs last, greps them all. An error must never carry secrets,
URL credentials, internal addresses, server file paths, exception class names or a traceback:
upstream failures name the deployment and the kind of failure only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx

LEAKS = {
    "URL credentials": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/@:\"']+:[^\s/@\"']+@", re.I),
    "an exception class name": re.compile(r"\b[A-Z][A-Za-z0-9]*(?:Error|Exception|Exit)\b"),
    "a traceback": re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"),
    "an errno": re.compile(r"\[Errno \d+\]"),
    "a Python repr": re.compile(r"<class '|<[a-z_.]+ object at 0x[0-9a-f]+>|\bobject at 0x[0-9a-f]{6,}"),
    "an internal address": re.compile(
        r"\b(?:127|10|192\.168|172\.(?:1[6-9]|2\d|3[01]))(?:\.\d{1,3}){2,3}(?::\d+)?\b"
    ),
    # a host and port: localhost:6379, redis.internal:6379, db.example.com:5432
    "a host and port": re.compile(r"\b(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+):\d{2,5}\b", re.I),
    "a server file path": re.compile(
        r"site-packages|/\.venv/|/collections/[^\s\"']+/|registry\.sqlite|/shard\b|/tmp/|ragline-upload"
        r"|[/\\][\w.-]+\.py\b"  # a module's path (an uploaded file's own name "x.py" is the user's)
    ),
    "an engine internal": re.compile(r"Shard is not initiali[sz]ed|qdrant_client", re.I),
    "a secret": re.compile(
        r"\bsk-[A-Za-z0-9_-]{6,}|Bearer [A-Za-z0-9._-]{8,}"
        # a ragline key (access/keys.py); "rl-<id>_…" is its masked form
        r"|\brl-[a-z0-9]{12}_[A-Za-z0-9]{4,}"
        r"|\badmin-k{20,}"  # the bootstrap admin key of the access tests
    ),
}


@dataclass
class ErrorBody:
    test: str
    method: str
    url: str
    status: int
    body: str


RECORDED: list[ErrorBody] = []
SEEN: Counter[str] = Counter()  # per test: responses whose body (or event stream) was seen, errors or not
CURRENT_TEST = ["(outside a test)"]


_SSE_BUFFER = 64 * 1024  # an unterminated line longer than this is not an event the audit checks


def _add(response: Any, body: str, status: int | None = None) -> None:
    req = response.request
    status = response.status_code if status is None else status
    RECORDED.append(ErrorBody(CURRENT_TEST[0], req.method, str(req.url), status, body[:4000]))


def _job_errors(body: str) -> list[str]:
    """The ``error`` of each job in a jobs answer (one job, or a list of them)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    jobs = doc.get("data") if isinstance(doc, dict) and isinstance(doc.get("data"), list) else [doc]
    return [j["error"] for j in jobs if isinstance(j, dict) and isinstance(j.get("error"), str)]


def _check_body(response: Any, content: bytes) -> None:
    body = content.decode("utf-8", "replace")
    SEEN[CURRENT_TEST[0]] += 1
    if response.status_code >= 400:
        _add(response, body)
    elif "/v1/jobs" in response.request.url.path:
        for error in _job_errors(body):
            _add(response, error, status=response.status_code)


class _Tap:
    """Watches a streamed body as the client reads it: error events, and the whole of an error body."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.sse = "text/event-stream" in response.headers.get("content-type", "")
        self.body = bytearray()
        self.line = bytearray()
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if not self.sse:
            if len(self.body) < 64 * 1024:
                self.body += chunk[: 64 * 1024]
            return
        self.line += chunk
        *lines, rest = bytes(self.line).split(b"\n")
        self.line = bytearray(rest[-_SSE_BUFFER:])
        for line in lines:
            self._event(line)

    def _event(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if text.startswith("data:") and '"error"' in text:
            _add(self.response, text[5:].strip(), status=self.response.status_code)

    def close(self) -> None:
        if self.done:
            return
        self.done = True
        if self.sse:
            SEEN[CURRENT_TEST[0]] += 1
            self._event(bytes(self.line))
            if self.response.status_code >= 400:
                _add(self.response, "(event stream)")
        else:
            _check_body(self.response, bytes(self.body))


def _clients() -> list[ModuleType]:
    """httpx, and httpx2 (the fork the openai client is built on) where it is installed."""
    modules = [httpx]
    try:
        import httpx2
    except ImportError:
        pass
    else:
        modules.append(httpx2)
    return modules


def _install_into(hx: ModuleType) -> None:
    class SyncTap(hx.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, tap: _Tap) -> None:
            self._inner, self._tap = inner, tap

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._inner:
                self._tap.feed(chunk)
                yield chunk
            self._tap.close()

        def close(self) -> None:
            self._inner.close()

    class AsyncTap(hx.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, tap: _Tap) -> None:
            self._inner, self._tap = inner, tap

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._inner:
                self._tap.feed(chunk)
                yield chunk
            self._tap.close()

        async def aclose(self) -> None:
            await self._inner.aclose()

    def record(response: Any) -> None:
        try:
            content = response.content
        except hx.ResponseNotRead:
            # streamed: checked as the client reads it (a body it never reads: nothing to check)
            tap = _Tap(response)
            if isinstance(response.stream, hx.SyncByteStream):
                response.stream = SyncTap(response.stream, tap)
            elif isinstance(response.stream, hx.AsyncByteStream):
                response.stream = AsyncTap(response.stream, tap)
            return
        _check_body(response, content)

    sync_send = hx.Client.send
    async_send = hx.AsyncClient.send

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        response = sync_send(self, request, **kwargs)
        record(response)
        return response

    async def asend(self: Any, request: Any, **kwargs: Any) -> Any:
        response = await async_send(self, request, **kwargs)
        record(response)
        return response

    send.audited = True  # type: ignore[attr-defined]
    asend.audited = True  # type: ignore[attr-defined]
    hx.Client.send = send
    hx.AsyncClient.send = asend


def install() -> None:
    for hx in _clients():
        _install_into(hx)


def installed() -> bool:
    """Whether the hooks are still the ones ``install`` put in place (in httpx and httpx2)."""
    hooks = [hook for hx in _clients() for hook in (hx.Client.send, hx.AsyncClient.send)]
    return all(getattr(hook, "audited", False) for hook in hooks)


def leaks(body: str) -> list[str]:
    return [what for what, pattern in LEAKS.items() if pattern.search(body)]
