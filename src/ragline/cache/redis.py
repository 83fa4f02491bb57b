"""The cache store shared by every replica: entries in Redis, each replica's vectors fed from it.

Entries are Redis strings (``<prefix>:cache:e:<key>``, JSON with the question's vector, expiring
with the entry's TTL); a sorted set (``<prefix>:cache:lru``, scored by last use) bounds their number,
the least recently used dropped first. Redis as Debian ships it has no vector search, so the
semantic neighbours are found in each replica's own ``QuestionIndex``: an entry written by one
replica is announced on the ``cache`` channel and every replica adds its vector; drops and purges
are announced the same way. A replica that starts late loads the vectors of the entries there
(``start``). A neighbour whose entry has gone is skipped (its entry is read from Redis before any
hit), so a lost announcement costs a miss, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from ragline.cache.base import CacheEntry, CacheUnavailable, Neighbour, Predicate
from ragline.cache.vectors import QuestionIndex
from ragline.state.redis import RedisState

log = logging.getLogger("ragline.cache")

CHANNEL = "cache"
_SCAN_BATCH = 500


class RedisCacheStore:
    kind = "redis"

    def __init__(
        self,
        state: RedisState,
        *,
        max_entries: int,
        dim: Callable[[], int],
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        self._state = state
        self._redis = state.client
        self._errors = state.errors
        self._max = max_entries
        self._on_evict = on_evict
        self._prefix = f"{state.prefix}:cache"
        self._lru = f"{self._prefix}:lru"
        self.vectors = QuestionIndex(dim)
        self._size = 0
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def _ekey(self, key: str) -> str:
        return f"{self._prefix}:e:{key}"

    # -- start: the announcements, then what is there already ------------------------------------------

    async def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="ragline-cache-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 5.0)
        try:
            await self._load()
        except self._errors as e:
            log.warning("the shared cache's entries could not be loaded (they are found as they come): %s", e)

    async def _load(self) -> None:
        """Add the vectors of the entries in Redis (the most recently used first, up to the bound)."""
        keys = [
            k.decode() if isinstance(k, bytes) else str(k)
            for k in await self._redis.zrevrange(self._lru, 0, self._max - 1)
        ]
        self._size = len(keys)
        for start in range(0, len(keys), _SCAN_BATCH):
            batch = keys[start : start + _SCAN_BATCH]
            for raw in await self._redis.mget([self._ekey(k) for k in batch]):
                if raw is not None:
                    await self._index(orjson.loads(raw))

    async def _index(self, data: dict[str, Any]) -> None:
        vec = data.get("vector")
        if vec and data["key"] not in self.vectors:
            vector = np.frombuffer(base64.b64decode(vec), dtype="<f4").astype(np.float32)
            await self.vectors.add(str(data["key"]), str(data["scope"]), vector)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._state.subscribe(CHANNEL) as messages:
                    self._subscribed.set()
                    async for message in messages:
                        await self._on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis went away: listen again (entries are checked on every hit)
                log.warning("cache announcements lost, resubscribing: %s", e)
                await asyncio.sleep(1.0)

    async def _on_message(self, message: str) -> None:
        verb, _, rest = message.partition(" ")
        keys = rest.split()
        if verb == "drop":
            await self.vectors.remove(keys)
        elif verb == "add":
            for raw in await self._redis.mget([self._ekey(k) for k in keys]):
                if raw is not None:
                    await self._index(orjson.loads(raw))

    # -- the store ---------------------------------------------------------------------------------------

    async def get(self, key: str, now: float) -> CacheEntry | None:
        try:
            raw = await self._redis.get(self._ekey(key))
            if raw is None:
                return None
            data = orjson.loads(raw)
            if float(data["expires_at"]) <= now:
                return None
            await self._redis.zadd(self._lru, {key: time.time()}, xx=True)
        except self._errors as e:
            raise CacheUnavailable(f"the shared cache failed: {type(e).__name__}") from e
        data.pop("vector", None)
        return CacheEntry(**data)

    async def put(self, entry: CacheEntry, vector: npt.NDArray[np.float32] | None = None) -> None:
        data = asdict(entry)
        if vector is not None:
            data["vector"] = base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()
        ttl_ms = max(1, int((entry.expires_at - time.time()) * 1000))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._ekey(entry.key), orjson.dumps(data), px=ttl_ms)
                pipe.zadd(self._lru, {entry.key: time.time()})
                pipe.zcard(self._lru)
                _, _, size = await pipe.execute()
            self._size = int(size)
            evicted: list[str] = []
            if self._size > self._max:
                popped = await self._redis.zpopmin(self._lru, self._size - self._max)
                evicted = [k.decode() if isinstance(k, bytes) else str(k) for k, _ in popped]
                if evicted:
                    await self._redis.delete(*[self._ekey(k) for k in evicted])
                    await self._state.publish(CHANNEL, "drop " + " ".join(evicted))
                    self._size -= len(evicted)
            if vector is not None:
                await self._state.publish(CHANNEL, "add " + entry.key)
        except self._errors as e:
            raise CacheUnavailable(f"the shared cache failed: {type(e).__name__}") from e
        if vector is not None:
            await self.vectors.add(entry.key, entry.scope, vector)
        if evicted:
            await self.vectors.remove(evicted)
            if self._on_evict is not None:
                self._on_evict(len(evicted))

    async def nearest(self, scope: str, vector: npt.NDArray[np.float32], limit: int) -> Sequence[Neighbour]:
        return await self.vectors.nearest(scope, vector, limit)

    async def drop(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        try:
            n = int(await self._redis.delete(*[self._ekey(k) for k in keys]))
            await self._redis.zrem(self._lru, *keys)
            await self._state.publish(CHANNEL, "drop " + " ".join(keys))
        except self._errors as e:
            raise CacheUnavailable(f"the shared cache failed: {type(e).__name__}") from e
        self._size = max(0, self._size - n)
        await self.vectors.remove(keys)
        return n

    async def purge(self, match: Predicate) -> int:
        """Every entry ``match`` accepts, across the fleet (a scan: an admin's operation)."""
        doomed: list[str] = []
        try:
            async for batch in self._batches():
                for raw in await self._redis.mget([self._ekey(k) for k in batch]):
                    if raw is None:
                        continue
                    data = orjson.loads(raw)
                    data.pop("vector", None)
                    if match(CacheEntry(**data)):
                        doomed.append(str(data["key"]))
        except self._errors as e:
            raise CacheUnavailable(f"the shared cache failed: {type(e).__name__}") from e
        n = 0
        for start in range(0, len(doomed), _SCAN_BATCH):
            n += await self.drop(doomed[start : start + _SCAN_BATCH])
        return n

    async def _batches(self) -> Any:
        cursor = 0
        while True:
            cursor, keys = await self._redis.zscan(self._lru, cursor, count=_SCAN_BATCH)
            names = [k.decode() if isinstance(k, bytes) else str(k) for k, _ in keys]
            if names:
                yield names
            if cursor == 0:
                return

    def size(self) -> int:
        return self._size

    async def optimize(self) -> None:
        await self.vectors.optimize()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self.vectors.close()
