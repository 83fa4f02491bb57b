"""The in-process cache store: an LRU of entries, and the questions' vectors in an embedded shard.

Entries live in an ``OrderedDict`` (least recently used first); the vectors of semantically
findable entries in a Qdrant engine shard (``index/edge.py``, HNSW over cosine) in a temporary
folder, filtered by scope inside the search, so a lookup at 100k entries stays a graph search,
not a scan. Shard calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ragline.cache.base import CacheEntry, Neighbour, Predicate
from ragline.index.base import IndexPoint
from ragline.index.edge import EdgeIndex
from ragline.index.filters import Condition, Filter

#: Vectors written between graph builds (at least; a fifth of those stored when that is more).
#: Below a few thousand points a search scans them, which is as fast as the graph.
_BUILD_EVERY = 5000


def point_id(key: str) -> str:
    """The shard's id for an entry (the shard takes UUIDs)."""
    return str(uuid.UUID(hex=key[:32].ljust(32, "0")))


class MemoryCacheStore:
    kind = "memory"

    def __init__(
        self, *, max_entries: int, dim: Callable[[], int], on_evict: Callable[[int], None] | None = None
    ) -> None:
        self._max = max_entries
        self._dim = dim
        self._on_evict = on_evict
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._vectors: set[str] = set()  # keys with a vector in the shard
        self._index: EdgeIndex | None = None
        self._dir: Path | None = None
        self._index_lock = threading.Lock()
        self._added = 0  # vectors written since the graph was last built
        self._optimizing: asyncio.Task[None] | None = None
        self._queued: list[IndexPoint] = []  # written once the graph build that holds the shard ends

    def _shard(self) -> EdgeIndex:
        with self._index_lock:
            if self._index is None:
                self._dir = Path(tempfile.mkdtemp(prefix="ragline-cache-"))
                self._index = EdgeIndex(self._dir / "shard", self._dim(), threads=1)
                self._index.ensure_payload_index("scope", "")
            return self._index

    async def get(self, key: str, now: float) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            await self.drop([key])
            return None
        self._entries.move_to_end(key)
        return entry

    async def put(self, entry: CacheEntry, vector: npt.NDArray[np.float32] | None = None) -> None:
        old = self._entries.pop(entry.key, None)
        if old is not None and old.key in self._vectors and vector is None:
            await self._unindex([old.key])
        self._entries[entry.key] = entry
        if vector is not None:
            point = IndexPoint(point_id(entry.key), vector, "", {"scope": entry.scope, "key": entry.key})
            self._vectors.add(entry.key)
            if self._optimizing is not None and not self._optimizing.done():
                self._queued.append(point)  # the build holds the shard: never make a request wait on it
            else:
                await asyncio.to_thread(self._shard().upsert, [point])
                self._added += 1
                if self._added >= max(_BUILD_EVERY, len(self._vectors) // 5):
                    self._optimizing = asyncio.get_running_loop().create_task(self.optimize())
        evicted = []
        while len(self._entries) > self._max:
            k, _ = self._entries.popitem(last=False)
            evicted.append(k)
        if evicted:
            await self._unindex([k for k in evicted if k in self._vectors])
            if self._on_evict is not None:
                self._on_evict(len(evicted))

    async def nearest(self, scope: str, vector: npt.NDArray[np.float32], limit: int) -> Sequence[Neighbour]:
        if not self._vectors:
            return []
        index = self._shard()
        flt = Filter([Condition("scope", "eq", scope)])
        hits, _ = await asyncio.to_thread(
            index.search, dense=vector, text=None, limit=limit, flt=flt, fields=("key",)
        )
        return [Neighbour(str(h.payload["key"]), h.score) for h in hits if h.payload.get("key")]

    async def drop(self, keys: Sequence[str]) -> int:
        gone = [k for k in keys if self._entries.pop(k, None) is not None]
        await self._unindex([k for k in gone if k in self._vectors])
        return len(gone)

    async def purge(self, match: Predicate) -> int:
        return await self.drop([k for k, e in self._entries.items() if match(e)])

    def size(self) -> int:
        return len(self._entries)

    async def _unindex(self, keys: Sequence[str]) -> None:
        if not keys or self._index is None:
            return
        self._vectors.difference_update(keys)
        await asyncio.to_thread(self._index.delete, [point_id(k) for k in keys])

    async def optimize(self) -> None:
        """Build the HNSW graph over what was written since the last build (a worker thread; the
        vectors that arrive meanwhile are written after it)."""
        if self._index is None:
            return
        self._added = 0
        try:
            await asyncio.to_thread(self._index.optimize)
        finally:
            while self._queued:
                batch, self._queued = self._queued, []
                live = [p for p in batch if str(p.payload["key"]) in self._vectors]
                await asyncio.to_thread(self._index.upsert, live)

    async def close(self) -> None:
        if self._optimizing is not None and not self._optimizing.done():
            await asyncio.gather(self._optimizing, return_exceptions=True)
        with self._index_lock:
            if self._index is not None:
                self._index.close()
                self._index = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
