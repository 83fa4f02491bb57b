"""The in-process cache store: an LRU of entries, the questions' vectors in a ``QuestionIndex``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from ragline.cache.base import CacheEntry, Neighbour, Predicate
from ragline.cache.vectors import QuestionIndex


class MemoryCacheStore:
    kind = "memory"

    def __init__(
        self, *, max_entries: int, dim: Callable[[], int], on_evict: Callable[[int], None] | None = None
    ) -> None:
        self._max = max_entries
        self._on_evict = on_evict
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self.vectors = QuestionIndex(dim)

    async def start(self) -> None:
        return None

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
        if old is not None and vector is None:
            await self.vectors.remove([old.key])
        self._entries[entry.key] = entry
        if vector is not None:
            await self.vectors.add(entry.key, entry.scope, vector)
        evicted = []
        while len(self._entries) > self._max:
            k, _ = self._entries.popitem(last=False)
            evicted.append(k)
        if evicted:
            await self.vectors.remove(evicted)
            if self._on_evict is not None:
                self._on_evict(len(evicted))

    async def nearest(self, scope: str, vector: npt.NDArray[np.float32], limit: int) -> Sequence[Neighbour]:
        return await self.vectors.nearest(scope, vector, limit)

    async def drop(self, keys: Sequence[str]) -> int:
        gone = [k for k in keys if self._entries.pop(k, None) is not None]
        await self.vectors.remove(gone)
        return len(gone)

    async def purge(self, match: Predicate) -> int:
        return await self.drop([k for k, e in self._entries.items() if match(e)])

    def size(self) -> int:
        return len(self._entries)

    async def optimize(self) -> None:
        await self.vectors.optimize()

    async def close(self) -> None:
        await self.vectors.close()
