"""What a cached answer is filed under: the normalised request, split into a scope and a question.

The exact key is a hash of everything that can change the output: the tenant, the model (and the
collection a RAG answer reads), the messages and every generation parameter. Fields that only
shape the transport (``stream``, ``stream_options``, ``user``, ragline's own ``cache`` control)
are left out, JSON keys are sorted, and message text is stripped of leading and trailing
whitespace.

The semantic scope is the same hash with the last user message's text left out: two requests in
one scope differ only in the question, so a semantic hit can only ever swap a question for one
that means the same, never a system prompt, a history turn, a parameter or a collection.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

#: Request fields that never change what the model answers.
TRANSPORT_FIELDS = frozenset({"stream", "stream_options", "user", "cache", "metadata", "store"})


@dataclass(frozen=True, slots=True)
class RequestKey:
    exact: str
    """Hex digest of the whole normalised request."""
    scope: str
    """Hex digest of the request without its question (the semantic cache's neighbourhood)."""
    question: str | None
    """The last user message's text; None when the request does not end with a user message."""


def _strip(content: Any) -> Any:
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        return [
            {**p, "text": p["text"].strip()} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
            for p in content
        ]
    return content


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(content):  # text only: an image or audio part is not a question we can match
            return " ".join(str(t) for t in parts).strip()
    return None


def request_key(tenant: str, collection: str | None, body: dict[str, Any]) -> RequestKey:
    """The keys of a request given as its JSON object (``model_dump(exclude_unset=True)``)."""
    fields = {k: v for k, v in body.items() if k not in TRANSPORT_FIELDS}
    messages = [
        {**m, "content": _strip(m.get("content"))} if isinstance(m, dict) else m
        for m in fields.get("messages") or []
    ]
    head: dict[str, Any] = {"tenant": tenant, "collection": collection}
    exact = _digest({**head, **fields, "messages": messages})
    question: str | None = None
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "user":
        question = _text(last.get("content"))
    if question:
        scope_messages = [*messages[:-1], {**last, "content": None}]  # type: ignore[dict-item]
        scope = _digest({**head, **fields, "messages": scope_messages, "semantic": True})
    else:
        question, scope = None, exact
    return RequestKey(exact, scope, question)


def _digest(obj: dict[str, Any]) -> str:
    data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def deterministic(body: dict[str, Any], default_temperature: float | None) -> bool:
    """Would the same request get the same answer? Greedy decoding (temperature 0) or a fixed seed.

    ``default_temperature`` is what the model uses when the request gives none: the local model's
    setting, or None for a gateway upstream (whose default is not known here: it samples).
    """
    if body.get("seed") is not None:
        return True
    t = body.get("temperature")
    if t is None:
        t = default_temperature
    return t is not None and float(t) == 0.0
