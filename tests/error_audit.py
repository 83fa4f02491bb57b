"""Every error body the suite's HTTP clients receive, checked for what must never leak.

conftest.py wraps httpx's ``Client.send`` and ``AsyncClient.send`` (the official openai client
goes through them too) for the whole session and records each response with a status of 400 or
more; tests/test_zz_error_leaks.py, which runs last, greps them all. An error must never carry
secrets, URL credentials, internal addresses, server file paths, exception class names or a
traceback: upstream failures name the deployment and the kind of failure only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

LEAKS = {
    "URL credentials": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/@:\"']+:[^\s/@\"']+@", re.I),
    "an exception class name": re.compile(r"\b[A-Z][A-Za-z0-9]*(?:Error|Exception|Exit)\b"),
    "a traceback": re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"),
    "an errno": re.compile(r"\[Errno \d+\]"),
    "an internal address": re.compile(
        r"\b(?:127|10|192\.168|172\.(?:1[6-9]|2\d|3[01]))(?:\.\d{1,3}){2,3}(?::\d+)?\b"
    ),
    "a server file path": re.compile(
        r"site-packages|/\.venv/|/collections/[^\s\"']+/|registry\.sqlite|/shard\b"
    ),
    "a secret": re.compile(r"\bsk-[A-Za-z0-9_-]{6,}|Bearer [A-Za-z0-9._-]{8,}"),
}


@dataclass
class ErrorBody:
    test: str
    method: str
    url: str
    status: int
    body: str


RECORDED: list[ErrorBody] = []
CURRENT_TEST = ["(outside a test)"]


def _record(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.content.decode("utf-8", "replace")
    except (httpx.ResponseNotRead, httpx.StreamError):
        return  # a streamed response the test did not read: nothing to check
    req = response.request
    RECORDED.append(ErrorBody(CURRENT_TEST[0], req.method, str(req.url), response.status_code, body[:4000]))


def install() -> None:
    sync_send = httpx.Client.send
    async_send = httpx.AsyncClient.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        response = sync_send(self, request, **kwargs)
        _record(response)
        return response

    async def asend(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        response = await async_send(self, request, **kwargs)
        _record(response)
        return response

    httpx.Client.send = send  # type: ignore[method-assign]
    httpx.AsyncClient.send = asend  # type: ignore[method-assign]


def leaks(body: str) -> list[str]:
    return [what for what, pattern in LEAKS.items() if pattern.search(body)]
