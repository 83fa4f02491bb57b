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

import time
from collections.abc import Sequence
from typing import Any

from prometheus_client.metrics import Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match, Route
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
    """Maps a request to its route template; static paths are one dict lookup."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes
        self._static: dict[str, str] | None = None
        self._dynamic: list[Route] = []

    def _build(self) -> dict[str, str]:
        static: dict[str, str] = {}
        for r in self._routes:
            if isinstance(r, Route):
                if r.param_convertors:
                    self._dynamic.append(r)
                else:
                    static[r.path] = r.path
        self._static = static
        return static

    def __call__(self, scope: Scope) -> str:
        static = self._static if self._static is not None else self._build()
        path: str = scope["path"]
        hit = static.get(path)
        if hit is not None:
            return hit
        for r in self._dynamic:
            match, _ = r.matches(scope)
            if match is not Match.NONE:
                return r.path
        return "other"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._route_of = _RouteLabels(routes)
        # label children are cached: prometheus_client's labels() takes a lock and builds tuples
        self._in_flight: dict[str, Gauge] = {}
        self._requests: dict[tuple[str, str, str, str], Counter] = {}
        self._latency: dict[tuple[str, str], Histogram] = {}
        self._overhead: dict[str, Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route_of(scope)
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
            TIME_TO_FIRST_TOKEN.labels(model, deployment).observe(stats.first_token_at - stats.start)
        if stats.prompt_tokens:
            TOKENS.labels(model, deployment, "prompt").inc(stats.prompt_tokens)
        if stats.completion_tokens:
            TOKENS.labels(model, deployment, "completion").inc(stats.completion_tokens)


def metrics_labels(stats: RequestStats | None, model: str, usage: Any = None) -> None:
    """Set the model label and token counts of a served request (``usage``: an OpenAI usage dict)."""
    if stats is None:
        return
    stats.model = model
    if isinstance(usage, dict):
        stats.add_tokens(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
