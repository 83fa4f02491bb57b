"""The response cache at the HTTP edge: the request's cache control, hit responses, stream replay.

``CachedChat`` sits between the chat route and ``ChatService``: it files the request
(``cache/keys.py``), asks the cache (``cache/service.py``), and on a hit answers without calling
a model: the stored ``chat.completion`` with a fresh id, or, for a streamed request, the same
answer replayed as a normal SSE stream (a role chunk, the content, the final chunk with the
citations, the usage chunk when asked for). Every response of a cacheable request says what the
cache did: the ``x-ragline-cache`` header (``miss``, ``hit``, ``semantic-hit``) and the body's
``ragline.cache`` field (with the similarity and the stored question on a semantic hit).

A request opts out with ``Cache-Control: no-cache`` / ``no-store`` or ``extra_body={"cache":
"no-cache" | "no-store"}``; ``"force"`` caches a request that samples.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from ragline.cache.keys import deterministic, request_key
from ragline.cache.service import CachePlan, Control, Lookup, ResponseCache
from ragline.server.protocol import ChatCompletionRequest
from ragline.server.serving import RAG_PREFIX, ChatService
from ragline.server.tenancy import Tenancy
from ragline.types import Answer

HEADER = "x-ragline-cache"


def control_of(req: ChatCompletionRequest, headers: Mapping[str, str] | None) -> Control | None:
    """The request's own word on caching: ``extra_body.cache`` wins over ``Cache-Control``."""
    if req.cache is not None:
        return req.cache
    value = headers.get("cache-control") if headers is not None else None
    if not value:
        return None
    directives = {d.strip().lower() for d in value.split(",")}
    if "no-store" in directives:
        return "no-store"
    if "no-cache" in directives:
        return "no-cache"
    return None


def sources_of(answer: Answer) -> dict[str, str]:
    """doc_id -> version of every source the answer was built from."""
    out: dict[str, str] = {}
    for hit in answer.sources:
        version = hit.payload.get("version")
        if hit.doc_id and version is not None:
            out[hit.doc_id] = str(version)
    return out


class CachedChat:
    """How one process's chat route uses the cache."""

    def __init__(self, cache: ResponseCache, chat: ChatService, local_temperature: float) -> None:
        self.cache = cache
        self._chat = chat
        self._local_temperature = local_temperature

    def plan(
        self, req: ChatCompletionRequest, tenancy: Tenancy, headers: Mapping[str, str] | None
    ) -> CachePlan | None:
        """Where the request is filed, and whether it is read or written (None: not cacheable).

        A cacheable request is validated here (``ChatService.check``), before the cache is read:
        a request the service would refuse is refused, never answered from the cache.
        """
        control = control_of(req, headers)
        chat = self._chat
        local = chat.uses_local_model(req)
        rag = local and (req.model.startswith(RAG_PREFIX) or req.rag is not None)
        if rag and chat.rag_mode(req) == "agentic":
            return None  # a run: its tools act, it may pause, and it has an id of its own
        if rag:
            # a RAG answer: the settings' temperature; the extractive mode picks, never samples
            same = chat.rag_mode(req) == "extractive" or deterministic({}, self._local_temperature)
        else:
            # the local model's default temperature is known; an upstream's default samples
            same = deterministic(
                {"seed": req.seed, "temperature": req.temperature}, self._local_temperature if local else None
            )
        if not self.cache.wants(deterministic=same, control=control):
            return None
        chat.check(req)
        collection = chat.collection_of(req, tenancy) if local else None
        body = req.model_dump(exclude_unset=True)
        key = request_key(tenancy.tenant, collection, body)
        retrieve = chat.source_ids(req, collection) if collection is not None else None
        return self.cache.plan(
            key,
            tenant=tenancy.tenant,
            model=req.model,
            collection=collection,
            control=control,
            retrieve=retrieve,
        )


def hit_body(found: Lookup) -> dict[str, Any]:
    """The stored completion as a new response: a fresh id and time, the cache's word in ``ragline``."""
    assert found.entry is not None
    body = found.entry.body
    return {
        **body,
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "created": int(time.time()),
        "ragline": {**(body.get("ragline") or {}), "cache": found.info()},
    }


def with_cache_info(body: dict[str, Any], found: Lookup) -> dict[str, Any]:
    """A freshly answered body, marked with what the cache did (a shallow copy: the stored body
    stays clean)."""
    return {**body, "ragline": {**(body.get("ragline") or {}), "cache": found.info()}}


def replay(body: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """A stored ``chat.completion`` as the ``chat.completion.chunk`` stream that would have produced it."""
    base = {
        "id": body["id"],
        "object": "chat.completion.chunk",
        "created": body["created"],
        "model": body["model"],
    }

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish}], **extra}

    choices = body.get("choices") or []
    last = len(choices) - 1
    for i, choice in enumerate(choices):
        message = choice.get("message") or {}
        index = int(choice.get("index", i))
        yield chunk(index, {"role": "assistant", "content": ""})
        content = message.get("content")
        if content:
            part = chunk(index, {"content": content})
            logprobs = choice.get("logprobs")
            if logprobs is not None:
                part["choices"][0]["logprobs"] = logprobs
            yield part
        calls = message.get("tool_calls")
        if calls:
            yield chunk(index, {"tool_calls": [{"index": j, **c} for j, c in enumerate(calls)]})
        extra: dict[str, Any] = {}
        if i == last and "citations" in body:  # a RAG answer: the sources in the final chunk, as streamed
            ragline = body.get("ragline") or {}
            extra = {
                "citations": body["citations"],
                "ragline": {"found": ragline.get("found"), "text": content, "cache": ragline.get("cache")},
            }
        yield chunk(index, {}, choice.get("finish_reason") or "stop", **extra)
    if include_usage and body.get("usage") is not None:
        yield {**base, "choices": [], "usage": body["usage"]}


async def replayed(body: dict[str, Any], include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    for part in replay(body, include_usage):
        yield part


class StreamCollector:
    """Joins a chat stream's chunks back into the ``chat.completion`` it delivered."""

    def __init__(self, mode: str | None = None) -> None:
        self._mode = mode
        self._top: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None
        self._citations: list[Any] | None = None
        self._ragline: dict[str, Any] | None = None
        self.error = False

    def feed(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            self.error = True
            return
        if not self._top:
            self._top = {k: chunk.get(k) for k in ("id", "created", "model")}
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        if "citations" in chunk:
            self._citations = chunk["citations"]
            self._ragline = chunk.get("ragline") or {}
        for c in chunk.get("choices") or []:
            state = self._choices.setdefault(
                int(c.get("index", 0)), {"content": [], "calls": {}, "finish": None, "logprobs": []}
            )
            delta = c.get("delta") or {}
            if delta.get("content"):
                state["content"].append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = state["calls"].setdefault(
                    int(call.get("index", 0)), {"id": None, "type": "function", "name": "", "arguments": ""}
                )
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            lp = c.get("logprobs")
            if isinstance(lp, dict) and lp.get("content"):
                state["logprobs"].extend(lp["content"])
            if c.get("finish_reason"):
                state["finish"] = c["finish_reason"]

    def body(self) -> dict[str, Any] | None:
        """The completion, or None when the stream failed or delivered no choice."""
        if self.error or not self._choices:
            return None
        choices = []
        for index in sorted(self._choices):
            s = self._choices[index]
            content: str | None = "".join(s["content"])
            if self._ragline is not None and isinstance(self._ragline.get("text"), str):
                content = self._ragline["text"]  # the final text, citations matched after generation
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if s["calls"]:
                message["content"] = content or None
                message["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": c["type"],
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for _, c in sorted(s["calls"].items())
                ]
            choice: dict[str, Any] = {"index": index, "message": message, "finish_reason": s["finish"]}
            if s["logprobs"]:
                choice["logprobs"] = {"content": s["logprobs"], "refusal": None}
            choices.append(choice)
        body: dict[str, Any] = {**self._top, "object": "chat.completion", "choices": choices}
        if self._usage is not None:
            body["usage"] = self._usage
        if self._citations is not None:
            body["citations"] = self._citations
            body["ragline"] = {"found": (self._ragline or {}).get("found"), "mode": self._mode}
        return body
