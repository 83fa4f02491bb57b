"""The shared-state seam: rate-limit counters, messages between replicas, and small expiring values.

Two implementations: ``InProcessState`` (one process, the default) and ``RedisState`` (every replica
sees the same counters, atomically: the ``limits`` library's Lua scripts run inside Redis).
``tests/test_state_contract.py`` runs one suite against both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from limits.aio.storage import Storage

from ragline.errors import RaglineError


class StateError(RaglineError):
    """The shared state failed (Redis unreachable)."""


@runtime_checkable
class SharedState(Protocol):
    kind: str
    """``memory`` or ``redis``."""

    @property
    def limits_storage(self) -> Storage:
        """The ``limits`` storage that rate limiters count in."""

    async def open(self) -> None:
        """Connect (and check that the server answers)."""

    async def close(self) -> None: ...

    async def publish(self, channel: str, message: str) -> None:
        """Send ``message`` to every current subscriber of ``channel`` (in every replica)."""

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """``async with state.subscribe(ch) as messages: async for m in messages: ...``; subscribed
        once the ``async with`` is entered, so nothing published after that is missed."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...

    async def set_if_absent(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Set ``key`` only when it holds no (unexpired) value, atomically across replicas: True when
        this call set it. A claim that only one replica wins (the gateway's half-open probe)."""

    async def delete(self, key: str) -> None: ...
