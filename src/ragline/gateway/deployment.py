"""The deployment seam: one place a model runs, behind one small protocol.

Two implementations: ``LocalDeployment`` (the embedded llama.cpp model, ``local.py``) and
``OpenAIDeployment`` (any OpenAI-compatible server over HTTP, ``upstream.py``). The router
only sees this protocol, so a new kind of backend is one new class.

Bodies are OpenAI chat-completion request dicts, already carrying the deployment's own
model id; answers are OpenAI ``chat.completion`` dicts or ``chat.completion.chunk`` dicts.
Failures are ``ragline.gateway.errors.UpstreamError`` subclasses, nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: connect (TCP/TLS), first token (request sent -> first chunk), total (whole call)."""

    connect: float = 5.0
    first_token: float = 60.0
    total: float = 600.0


DEFAULT_TIMEOUTS = Timeouts()


class Deployment(Protocol):
    @property
    def name(self) -> str:
        """Unique name (configuration, metrics labels)."""
        ...

    @property
    def model(self) -> str:
        """The model id this deployment is called with (the request's ``model`` is rewritten to it)."""
        ...

    @property
    def kind(self) -> str:
        """``local`` or ``openai``."""
        ...

    async def complete(self, body: dict[str, Any], *, budget: float) -> dict[str, Any]:
        """One non-streaming chat completion; ``budget`` is the seconds left of the request's deadline."""
        ...

    def stream(self, body: dict[str, Any], *, budget: float) -> AsyncGenerator[dict[str, Any], None]:
        """Stream chunk dicts. Closing the iterator (``aclose``) cancels the upstream call."""
        ...

    async def probe(self, timeout: float) -> None:
        """Raise an UpstreamError when the deployment is not able to serve."""
        ...

    async def aclose(self) -> None:
        """Release connections and other resources."""
        ...


def has_payload(chunk: dict[str, Any]) -> bool:
    """True when a chunk carries something the client must not receive twice (text, tool calls, the end).

    Chunks before the first such one (the role announcement) can be dropped and the request
    sent again elsewhere without the client noticing.
    """
    if chunk.get("usage"):
        return True
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("function_call"):
            return True
        if delta.get("refusal") or delta.get("reasoning_content"):
            return True
    return False
