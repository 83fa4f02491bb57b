"""Per-request accounting shared by the HTTP middleware and the code that calls models.

The metrics middleware opens a :class:`RequestStats` for every HTTP request and
makes it current (a context variable, so it follows the request into tasks and
worker threads). Code that calls a model or an upstream wraps the call in
:func:`upstream`; the middleware then knows how much of the request's time was
spent waiting for the model, and reports the rest as ragline's own overhead.

Everything here is cheap: a few attribute writes per request, no locks (a dict
insert/pop and a list append are atomic under the GIL, which is all the
cross-thread use needs).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

_ids = itertools.count()


class RequestStats:
    """What one request did: labels for its metrics, token counts and time spent in upstream calls."""

    __slots__ = (
        "_done",
        "_open",
        "completion_tokens",
        "deployment",
        "first_token_at",
        "model",
        "prompt_tokens",
        "start",
    )

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        #: Client-facing model name; set only once it is known to be served (bounded label set).
        self.model = ""
        #: Deployment that served the request ("local" for the embedded models).
        self.deployment = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_token_at: float | None = None
        self._done: list[float] = []
        self._open: dict[int, float] = {}

    def add_upstream(self, seconds: float, deployment: str | None = None) -> None:
        """Count ``seconds`` of model/upstream time measured elsewhere (e.g. by the engine)."""
        self._done.append(max(0.0, seconds))
        if deployment:
            self.deployment = deployment

    @contextmanager
    def upstream(self, deployment: str | None = None) -> Iterator[None]:
        """Time a model/upstream call (around a blocking call in a thread or an await on the loop)."""
        if deployment:
            self.deployment = deployment
        key = next(_ids)
        self._open[key] = time.perf_counter()
        try:
            yield
        finally:
            self._done.append(time.perf_counter() - self._open.pop(key))

    def upstream_seconds(self, now: float | None = None) -> float:
        """Upstream time so far, including calls still in progress."""
        now = time.perf_counter() if now is None else now
        total = sum(self._done)
        for since in list(self._open.values()):
            total += now - since
        return total

    def overhead_seconds(self, now: float | None = None) -> float:
        """Time spent in ragline itself: elapsed time minus time waiting for models."""
        now = time.perf_counter() if now is None else now
        return max(0.0, (now - self.start) - self.upstream_seconds(now))

    def add_tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()


_CURRENT: ContextVar[RequestStats | None] = ContextVar("ragline_request_stats", default=None)


def current() -> RequestStats | None:
    """The stats of the request being served, or None outside a request."""
    return _CURRENT.get()


def activate(stats: RequestStats | None) -> Token[RequestStats | None]:
    """Make ``stats`` current; returns a token for :func:`deactivate`."""
    return _CURRENT.set(stats)


def deactivate(token: Token[RequestStats | None]) -> None:
    _CURRENT.reset(token)


@contextmanager
def upstream(deployment: str | None = None) -> Iterator[None]:
    """Time a model/upstream call against the current request (a no-op outside one)."""
    stats = _CURRENT.get()
    if stats is None:
        yield
        return
    with stats.upstream(deployment):
        yield
