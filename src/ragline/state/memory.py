"""Shared state inside one process: the ``limits`` in-memory storage and in-process fan-out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from limits.aio.storage import MemoryStorage, Storage


class InProcessState:
    """The embedded default: exact within this process, invisible to any other."""

    kind = "memory"

    def __init__(self) -> None:
        self._storage = MemoryStorage()
        self._channels: dict[str, set[asyncio.Queue[str]]] = {}
        self._values: dict[str, tuple[bytes, float | None]] = {}

    @property
    def limits_storage(self) -> Storage:
        return self._storage

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        await self._storage.reset()
        self._values.clear()

    async def publish(self, channel: str, message: str) -> None:
        for q in self._channels.get(channel, ()):
            q.put_nowait(message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[str]]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._channels.setdefault(channel, set()).add(queue)

        async def messages() -> AsyncIterator[str]:
            while True:
                yield await queue.get()

        try:
            yield messages()
        finally:
            subscribers = self._channels.get(channel)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._channels[channel]

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    def _live(self, key: str) -> bytes | None:
        found = self._values.get(key)
        if found is None:
            return None
        value, expires = found
        if expires is not None and time.monotonic() >= expires:
            del self._values[key]
            return None
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._values[key] = (value, time.monotonic() + ttl_s if ttl_s is not None else None)

    async def set_if_absent(self, key: str, value: bytes, ttl_s: float) -> bool:
        if self._live(key) is not None:  # no await between the check and the write: atomic
            return False
        self._values[key] = (value, time.monotonic() + ttl_s)
        return True

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)
