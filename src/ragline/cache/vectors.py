"""The questions' vectors of one process: an embedded Qdrant engine shard, searched by scope.

Dense cosine HNSW (``index/edge.py``) in a temporary folder; the scope is a payload keyword filtered
inside the search, so a lookup among 100k entries stays a graph search, not a scan. The graph is
built in the background as vectors arrive (every ``_BUILD_EVERY``, or a fifth of those held); a
write that arrives during a build is queued and written after it, so no request waits on a build.
Shard calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ragline.cache.base import Neighbour
from ragline.index.base import IndexPoint
from ragline.index.edge import EdgeIndex
from ragline.index.filters import Condition, Filter

#: Vectors written between graph builds (at least; a fifth of those held when that is more).
#: Below a few thousand points a search scans them, which is as fast as the graph.
_BUILD_EVERY = 5000


def point_id(key: str) -> str:
    """The shard's id for an entry (the shard takes UUIDs)."""
    return str(uuid.UUID(hex=key[:32].ljust(32, "0")))


class QuestionIndex:
    def __init__(self, dim: Callable[[], int]) -> None:
        self._dim = dim
        self._keys: set[str] = set()
        self._index: EdgeIndex | None = None
        self._dir: Path | None = None
        self._lock = threading.Lock()
        self._added = 0
        self._building: asyncio.Task[None] | None = None
        self._queued: list[IndexPoint] = []

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def _shard(self) -> EdgeIndex:
        with self._lock:
            if self._index is None:
                self._dir = Path(tempfile.mkdtemp(prefix="ragline-cache-"))
                # a lookup needs the few nearest of questions that are near-duplicates: a small beam
                self._index = EdgeIndex(self._dir / "shard", self._dim(), hnsw_ef=64, threads=1)
                self._index.ensure_payload_index("scope", "")
            return self._index

    async def add(self, key: str, scope: str, vector: npt.NDArray[np.float32]) -> None:
        point = IndexPoint(point_id(key), vector, "", {"scope": scope, "key": key})
        self._keys.add(key)
        if self._building is not None and not self._building.done():
            self._queued.append(point)
            return
        await asyncio.to_thread(self._shard().upsert, [point])
        self._added += 1
        if self._added >= max(_BUILD_EVERY, len(self._keys) // 5):
            self._building = asyncio.get_running_loop().create_task(self.optimize())

    async def remove(self, keys: Sequence[str]) -> None:
        gone = [k for k in keys if k in self._keys]
        if not gone or self._index is None:
            return
        self._keys.difference_update(gone)
        await asyncio.to_thread(self._index.delete, [point_id(k) for k in gone])

    async def nearest(self, scope: str, vector: npt.NDArray[np.float32], limit: int) -> Sequence[Neighbour]:
        if not self._keys:
            return []
        index = self._shard()
        flt = Filter([Condition("scope", "eq", scope)])
        hits, _ = await asyncio.to_thread(
            index.search, dense=vector, text=None, limit=limit, flt=flt, fields=("key",)
        )
        return [
            Neighbour(str(h.payload["key"]), h.score)
            for h in hits
            if h.payload.get("key") and str(h.payload["key"]) in self._keys
        ]

    async def optimize(self) -> None:
        """Build the graph over what was written since the last build; the writes that arrive
        meanwhile are made after it, and built in turn when they are many."""
        if self._index is None:
            return
        while True:
            self._added = 0
            try:
                await asyncio.to_thread(self._index.optimize)
            finally:
                flushed = 0
                while self._queued:
                    batch, self._queued = self._queued, []
                    live = [p for p in batch if str(p.payload["key"]) in self._keys]
                    await asyncio.to_thread(self._index.upsert, live)
                    flushed += len(live)
                self._added = flushed
            if flushed < _BUILD_EVERY:
                return

    async def close(self) -> None:
        if self._building is not None and not self._building.done():
            await asyncio.gather(self._building, return_exceptions=True)
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
