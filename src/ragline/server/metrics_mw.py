"""Request metrics and the ``x-ragline-overhead-ms`` header, as a pure ASGI middleware.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``): no extra task, no body
buffering, streaming responses pass through untouched. Per request it costs a
route lookup (a dict hit for static paths), one ``RequestStats`` object and a
handful of metric updates on cached label children.

Labels are bounded: the route is the matched path template ("other" when none
matches), the model and deployment are set by handlers only for models that are
actually served (see :mod:`ragline.observability.context`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.metrics import Counter, Gauge, Histogram
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragline.observability.context import RequestStats, activate, deactivate
from ragline.observability.metrics import (
    IN_FLIGHT,
    OVERHEAD,
    REQUEST_LATENCY,
    REQUESTS,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
)

OVERHEAD_HEADER = b"x-ragline-overhead-ms"


class _RouteLabels:
    """Maps a request path to its route template; static paths are one dict lookup.

    Built on first use from ``templates()`` (every served path template), so routes
    added after the middleware was installed are known too.
    """

    def __init__(self, templates: Callable[[], Iterable[str]]) -> None:
        self._templates = templates
        self._static: dict[str, str] | None = None
        self._dynamic: list[tuple[re.Pattern[str], str]] = []

    def _build(self) -> dict[str, str]:
        static: dict[str, str] = {}
        for t in sorted(set(self._templates())):
            if "{" in t:
                regex, _, _ = compile_path(t)
                self._dynamic.append((regex, t))
            else:
                static[t] = t
        self._static = static
        return static

    def __call__(self, path: str) -> str:
        static = self._static if self._static is not None else self._build()
        hit = static.get(path)
        if hit is not None:
            return hit
        for regex, template in self._dynamic:
            if regex.match(path):
                return template
        return "other"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, templates: Callable[[], Iterable[str]]) -> None:
        self.app = app
        self._route_of = _RouteLabels(templates)
        # label children are cached: prometheus_client's labels() takes a lock and builds tuples
        self._in_flight: dict[str, Gauge] = {}
        self._requests: dict[tuple[str, str, str, str], Counter] = {}
        self._latency: dict[tuple[str, str], Histogram] = {}
        self._overhead: dict[str, Histogram] = {}
        self._ttft: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route_of(scope["path"])
        stats = RequestStats()
        token = activate(stats)
        in_flight = self._in_flight.get(route)
        if in_flight is None:
            in_flight = self._in_flight[route] = IN_FLIGHT.labels(route)
        in_flight.inc()
        status = 500

        async def send_with_header(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                ms = stats.overhead_seconds() * 1000.0
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), (OVERHEAD_HEADER, b"%.3f" % ms)],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            in_flight.dec()
            deactivate(token)
            self._record(route, stats, status)

    def _record(self, route: str, stats: RequestStats, status: int) -> None:
        now = time.perf_counter()
        model, deployment = stats.model, stats.deployment
        key = (route, model, deployment, str(status))
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = REQUESTS.labels(*key)
        counter.inc()
        latency = self._latency.get((route, model))
        if latency is None:
            latency = self._latency[(route, model)] = REQUEST_LATENCY.labels(route, model)
        latency.observe(now - stats.start)
        overhead = self._overhead.get(route)
        if overhead is None:
            overhead = self._overhead[route] = OVERHEAD.labels(route)
        overhead.observe(stats.overhead_seconds(now))
        if stats.first_token_at is not None:
            ttft = self._ttft.get((model, deployment))
            if ttft is None:
                ttft = self._ttft[(model, deployment)] = TIME_TO_FIRST_TOKEN.labels(model, deployment)
            ttft.observe(stats.first_token_at - stats.start)
        if stats.prompt_tokens or stats.completion_tokens:
            observe_usage(model, deployment, stats.usage())


#: Token counter children by (model, deployment, direction): labels() takes a lock and builds tuples.
_TOKEN_COUNTERS: dict[tuple[str, str, str], Counter] = {}


def _tokens(model: str, deployment: str, direction: str) -> Counter:
    key = (model, deployment, direction)
    counter = _TOKEN_COUNTERS.get(key)
    if counter is None:
        counter = _TOKEN_COUNTERS[key] = TOKENS.labels(*key)
    return counter


def observe_usage(model: str, deployment: str, usage: Any) -> None:
    """Count the tokens of work done outside an HTTP request (async jobs); ``usage``: OpenAI's dict."""
    if not isinstance(usage, dict):
        return
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    if prompt:
        _tokens(model, deployment, "prompt").inc(prompt)
    if completion:
        _tokens(model, deployment, "completion").inc(completion)
