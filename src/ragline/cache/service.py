"""The response cache: what may be served from it, and what is kept.

``plan`` decides per request whether the cache is read and written (sampled requests are not,
unless the settings or the request opt in; ``no-cache`` skips the read, ``no-store`` both) and
files it under its keys (``keys.py``). ``lookup`` tries the exact key, then, for RAG answers and
the chat models opted in, the nearest stored question of the same scope: a neighbour over the
similarity threshold is a hit only if the second check (``match.py``) finds nothing that tells
the two questions apart. Every hit of a RAG answer is checked against the collection's registry
first: if a document it was built from has changed or gone, the entry is dropped and the request
answered afresh, so no answer outlives its sources, whichever process changed them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from ragline.cache.base import CacheEntry, CacheStore, CacheUnavailable
from ragline.cache.keys import RequestKey
from ragline.cache.match import QuestionMatcher
from ragline.config import CacheSettings
from ragline.observability import metrics

log = logging.getLogger("ragline.cache")

Status = Literal["hit", "semantic-hit", "miss"]
Control = Literal["no-cache", "no-store", "force"]
#: Neighbours looked at per semantic lookup (the nearest may be vetoed where the next is not).
_NEIGHBOURS = 3

Embed = Callable[[str], Awaitable[npt.NDArray[np.float32]]]
#: (stored collection, doc ids) -> doc_id -> current version, for those that exist.
Versions = Callable[[str, Sequence[str]], Awaitable[dict[str, str]]]
#: (question, its embedding) -> the chunk ids a RAG request's retrieval finds for it, best first.
Retrieve = Callable[[str, npt.NDArray[np.float32]], Awaitable[list[str]]]


@dataclass(slots=True)
class CachePlan:
    key: RequestKey
    tenant: str
    model: str
    collection: str | None
    read: bool
    write: bool
    semantic: bool
    #: A RAG request's retrieval: a semantic hit needs it to find the answer's own sources.
    retrieve: Retrieve | None = None


@dataclass(slots=True)
class Lookup:
    status: Status
    entry: CacheEntry | None = None
    similarity: float | None = None
    vector: npt.NDArray[np.float32] | None = None
    """The question's embedding when it was computed (stored with the answer on a miss)."""

    def info(self) -> dict[str, Any]:
        """The response's ``ragline.cache`` field."""
        out: dict[str, Any] = {"status": self.status}
        if self.status == "semantic-hit" and self.entry is not None:
            out["similarity"] = round(float(self.similarity or 0.0), 4)
            out["matched_question"] = self.entry.question
        return out


class ResponseCache:
    def __init__(
        self,
        settings: CacheSettings,
        store: CacheStore,
        *,
        embed: Embed,
        versions: Versions,
        matcher: QuestionMatcher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.backend = store
        self._embed = embed
        self._versions = versions
        sem = settings.semantic
        if matcher is None:
            matcher = (
                QuestionMatcher(check=sem.check)
                if sem.threshold is None
                else QuestionMatcher(threshold=sem.threshold, check=sem.check)
            )
        self.matcher = matcher
        self._semantic_models = frozenset(sem.models)
        self._clock = clock
        self._warned_at = -1e9

    def wants(self, *, deterministic: bool, control: Control | None) -> bool:
        """Is a request with this determinism and control cached at all?"""
        if not self.settings.enabled or control == "no-store":
            return False
        return deterministic or self.settings.sampled or control == "force"

    def plan(
        self,
        key: RequestKey,
        *,
        tenant: str,
        model: str,
        collection: str | None,
        control: Control | None,
        retrieve: Retrieve | None = None,
    ) -> CachePlan:
        """How a request the cache ``wants`` uses it: read (unless ``no-cache``), written, matched
        semantically; ``retrieve``: a RAG request's retrieval, for the sources check."""
        sem = self.settings.semantic
        semantic = key.question is not None and (
            (collection is not None and sem.rag) or model in self._semantic_models
        )
        check = retrieve if collection is not None and sem.rag_sources else None
        return CachePlan(key, tenant, model, collection, control != "no-cache", True, semantic, check)

    async def lookup(self, plan: CachePlan) -> Lookup:
        """What the cache holds for the request (a miss, never an error, when the store fails)."""
        try:
            return await self._lookup(plan)
        except CacheUnavailable as e:
            self._unavailable(e)
            return Lookup("miss")

    def _unavailable(self, e: Exception) -> None:
        metrics.CACHE_ERRORS.inc()
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            log.warning("the response cache is unavailable, answering without it: %s", e)

    async def _lookup(self, plan: CachePlan) -> Lookup:
        if not plan.read:
            metrics.CACHE_REQUESTS.labels("bypass").inc()
            return Lookup("miss")
        now = self._clock()
        entry = await self.backend.get(plan.key.exact, now)
        if entry is not None and await self._fresh(entry):
            return self._served(Lookup("hit", entry, 1.0))
        vector: npt.NDArray[np.float32] | None = None
        if plan.semantic and plan.key.question is not None:
            vector = await self._embed(plan.key.question)
            for n in await self.backend.nearest(plan.key.scope, vector, _NEIGHBOURS):
                if n.similarity < self.matcher.threshold:
                    break  # best first: the rest are further still
                entry = await self.backend.get(n.key, now)
                if entry is None or entry.question is None or entry.scope != plan.key.scope:
                    continue
                verdict = self.matcher.judge(plan.key.question, entry.question, n.similarity)
                if not verdict.hit:
                    metrics.CACHE_VETOES.inc()
                    continue
                if not await self._same_sources(plan, entry, vector):
                    metrics.CACHE_VETOES.inc()
                    continue
                if await self._fresh(entry):
                    return self._served(Lookup("semantic-hit", entry, n.similarity))
        metrics.CACHE_REQUESTS.labels("miss").inc()
        return Lookup("miss", vector=vector)

    def _served(self, found: Lookup) -> Lookup:
        entry = found.entry
        assert entry is not None
        metrics.CACHE_REQUESTS.labels(found.status).inc()
        metrics.CACHE_SAVED_SECONDS.inc(entry.latency_s)
        metrics.CACHE_SAVED_USD.inc(entry.cost_nano / 1e9)
        return found

    async def _same_sources(
        self, plan: CachePlan, entry: CacheEntry, vector: npt.NDArray[np.float32]
    ) -> bool:
        """A RAG answer serves a reworded question only if that question's retrieval finds the
        answer's own sources (as many as it was built from, in any order): a rewording that moves
        retrieval would be answered from other chunks. Measured in bench/cache_rag_correctness.py."""
        if plan.retrieve is None or not entry.retrieved or plan.key.question is None:
            return True
        found = await plan.retrieve(plan.key.question, vector)
        return set(found[: len(entry.retrieved)]) == set(entry.retrieved)

    async def _fresh(self, entry: CacheEntry) -> bool:
        """Every document the entry was built from is still at the version it read (else dropped)."""
        if entry.collection is None or not entry.sources:
            return True
        current = await self._versions(entry.collection, list(entry.sources))
        if all(current.get(doc) == version for doc, version in entry.sources.items()):
            return True
        metrics.CACHE_STALE.inc()
        await self.backend.drop([entry.key])
        self._gauge()
        return False

    async def store(
        self,
        plan: CachePlan,
        body: dict[str, Any],
        *,
        sources: dict[str, str] | None = None,
        latency_s: float = 0.0,
        cost_nano: int = 0,
        vector: npt.NDArray[np.float32] | None = None,
        retrieved: Sequence[str] = (),
    ) -> bool:
        """Keep an answer just served; False when it is not kept (too large, an error, cut short, the
        store unavailable). ``retrieved``: a RAG answer's source chunk ids, best first."""
        try:
            return await self._keep(plan, body, sources, latency_s, cost_nano, vector, retrieved)
        except CacheUnavailable as e:
            self._unavailable(e)
            return False

    async def _keep(
        self,
        plan: CachePlan,
        body: dict[str, Any],
        sources: dict[str, str] | None,
        latency_s: float,
        cost_nano: int,
        vector: npt.NDArray[np.float32] | None,
        retrieved: Sequence[str] = (),
    ) -> bool:
        if not plan.write or not _complete(body):
            return False
        size = len(orjson.dumps(body))
        if size > self.settings.max_entry_bytes:
            return False
        if plan.semantic and vector is None and plan.key.question is not None:
            vector = await self._embed(plan.key.question)
        now = self._clock()
        entry = CacheEntry(
            key=plan.key.exact,
            scope=plan.key.scope,
            tenant=plan.tenant,
            model=plan.model,
            collection=plan.collection,
            question=plan.key.question,
            body=body,
            sources=dict(sources or {}),
            retrieved=list(retrieved),
            created_at=now,
            expires_at=now + self.settings.ttl_s,
            latency_s=latency_s,
            cost_nano=cost_nano,
            size=size,
        )
        await self.backend.put(entry, vector if plan.semantic else None)
        self._gauge()
        return True

    async def purge(
        self, *, tenant: str | None = None, collection: str | None = None, model: str | None = None
    ) -> int:
        """Drop every entry of the tenant, collection (stored name) and model given (all of them: None)."""

        def match(e: CacheEntry) -> bool:
            return (
                (tenant is None or e.tenant == tenant)
                and (collection is None or e.collection == collection)
                and (model is None or e.model == model)
            )

        n = await self.backend.purge(match)
        self._gauge()
        return n

    async def forget_documents(self, collection: str, doc_ids: Sequence[str]) -> int:
        """Drop the entries built from any of these documents (they changed or went)."""
        ids = set(doc_ids)
        n = await self.backend.purge(lambda e: e.collection == collection and not ids.isdisjoint(e.sources))
        self._gauge()
        return n

    def _gauge(self) -> None:
        metrics.CACHE_ENTRIES.set(self.backend.size())

    async def close(self) -> None:
        await self.backend.close()


def _complete(body: dict[str, Any]) -> bool:
    """A whole answer: choices that all finished normally (not cut at max_tokens, not an error)."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or "error" in body:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") in ("stop", "tool_calls") for c in choices)
