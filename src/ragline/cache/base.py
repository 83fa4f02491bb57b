"""The cache-store seam: entries by exact key, and the questions' vectors by scope.

Two implementations: ``MemoryCacheStore`` (this process) and ``RedisCacheStore`` (entries shared
by every replica in Redis; each replica's ``QuestionIndex`` fed from it). Both keep the questions'
vectors in an embedded Qdrant engine shard (``vectors.py``). A store keeps entries for at most
their TTL and at most its size bound, evicting the least recently used. What may be served is
decided above it (``service.ResponseCache``): a store only keeps and finds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ragline.errors import RaglineError


class CacheUnavailable(RaglineError):
    """The store cannot be reached (requests are answered without the cache)."""


@dataclass(slots=True)
class CacheEntry:
    key: str
    """The exact key (``keys.RequestKey.exact``)."""
    scope: str
    tenant: str
    model: str
    collection: str | None
    """The stored name of the collection a RAG answer was built from."""
    question: str | None
    body: dict[str, Any]
    """The response as first served (chat.completion), without ragline's cache field."""
    sources: dict[str, str] = field(default_factory=dict)
    """doc_id -> version of every document the answer was built from (RAG answers)."""
    retrieved: list[str] = field(default_factory=list)
    """The chunk ids of the RAG answer's sources, best first (what its retrieval found)."""
    created_at: float = 0.0
    expires_at: float = 0.0
    latency_s: float = 0.0
    """What answering took the first time: what a hit saves."""
    cost_nano: int = 0
    """What the answer cost the first time (nano-dollars, the price table's)."""
    size: int = 0
    """Bytes of the encoded body (the store's size accounting)."""


@dataclass(frozen=True, slots=True)
class Neighbour:
    key: str
    similarity: float


Predicate = Callable[[CacheEntry], bool]


@runtime_checkable
class CacheStore(Protocol):
    kind: str

    async def start(self) -> None:
        """Begin serving (after the shared state is open)."""

    async def get(self, key: str, now: float) -> CacheEntry | None:
        """The live entry under ``key`` (an expired one is dropped and None returned)."""

    async def put(self, entry: CacheEntry, vector: npt.NDArray[np.float32] | None = None) -> None:
        """Keep ``entry`` (replacing one with the same key); with ``vector``, findable by ``nearest``."""

    async def nearest(self, scope: str, vector: npt.NDArray[np.float32], limit: int) -> Sequence[Neighbour]:
        """The stored questions of ``scope`` closest to ``vector`` (cosine), best first."""

    async def drop(self, keys: Sequence[str]) -> int:
        """Remove these entries; the number that were there."""

    async def purge(self, match: Predicate) -> int:
        """Remove every entry ``match`` accepts; the number removed."""

    def size(self) -> int:
        """Entries kept now."""

    async def optimize(self) -> None:
        """Build the vector graph now (it is also built in the background as vectors arrive)."""

    async def close(self) -> None: ...
