"""Shared state in Redis: counters every replica shares exactly, pub/sub between replicas.

Rate-limit counters are the ``limits`` library's Redis storage (its Lua scripts update a window
atomically inside Redis), through redis-py's asyncio client. Needs the ``redis`` extra:
``pip install 'ragline[redis]'``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit

from limits.aio.storage import RedisStorage, Storage

from ragline.optional import require
from ragline.state.base import StateError

if TYPE_CHECKING:
    from redis.asyncio import Redis

_FEATURE = "shared state in Redis (state.url=redis://...)"


class LuaScript(Protocol):
    """A registered script: redis-py's ``Script``/``AsyncScript`` (its SHA1 and its source)."""

    @property
    def sha(self) -> str: ...

    @property
    def script(self) -> Any: ...


ScriptCall = tuple[LuaScript, Sequence[str], Sequence[Any]]
"""A script, its keys and its arguments."""


def require_driver() -> None:
    """Raise MissingDependency (naming the ``redis`` extra) unless redis-py imports."""
    require("redis", extra="redis", feature=_FEATURE)


class RedisState:
    """Shared state in the Redis server at ``url`` (``redis://host:6379/0``, ``rediss://`` for TLS)."""

    kind = "redis"

    def __init__(self, url: str, key_prefix: str = "ragline", *, timeout_s: float = 5.0) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise StateError(f"state.url must start with redis:// or rediss://, not {scheme}://")
        redis = require("redis", extra="redis", feature=_FEATURE)
        self.url = url
        self.prefix = key_prefix
        self.errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        """What a failed Redis command raises."""
        self._noscript: type[Exception] = redis.exceptions.NoScriptError
        # nothing connects before the first command (open() pings)
        self._redis: Redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        # one connection pool for the limiter's scripts and everything else
        self._storage = RedisStorage(
            "async+" + url,
            implementation="redispy",
            key_prefix=f"{key_prefix}:limits",
            connection_pool=self._redis.connection_pool,
        )

    @property
    def client(self) -> Redis:
        """The asyncio client (one connection pool with the rate limiter)."""
        return self._redis

    async def eval_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run Lua scripts in one pipeline (one round trip), in order; their replies.

        EVALSHA only, with no SCRIPT EXISTS first (redis-py's scripts in a pipeline ask for that on
        every execute, a second round trip). When Redis does not know a script (it restarted, or its
        script cache was flushed), every script of the batch is loaded and the calls that failed are
        run again, with each later call on the same keys (a read after a failed write would be stale).
        """
        try:
            return await self._eval_many(calls)
        except self.errors as e:
            raise StateError(f"Redis at {_where(self.url)} failed: {type(e).__name__}") from e

    async def _eval_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        replies = await self._pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, self._noscript)]
        if missing:
            for script in {id(c[0]): c[0] for c in calls}.values():
                await self._redis.script_load(script.script)
            touched: set[str] = set()
            again: list[int] = []
            for i, (_, keys, _) in enumerate(calls):
                if i in missing or touched.intersection(keys):
                    again.append(i)
                    touched.update(keys)
            for i, r in zip(again, await self._pipeline([calls[i] for i in again]), strict=True):
                replies[i] = r
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    async def _pipeline(self, calls: Sequence[ScriptCall]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    @property
    def limits_storage(self) -> Storage:
        return self._storage

    async def open(self) -> None:
        try:
            await cast(Awaitable[bool], self._redis.ping())
            if not await self._storage.check():
                raise StateError("Redis did not answer the rate limiter's check")
        except self.errors as e:
            raise StateError(f"cannot reach Redis at {_where(self.url)}: {type(e).__name__}") from e

    async def close(self) -> None:
        await self._redis.aclose()  # and the shared connection pool (reconnects if used again)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:kv:{key}"

    def _channel(self, channel: str) -> str:
        return f"{self.prefix}:ch:{channel}"

    async def publish(self, channel: str, message: str) -> None:
        await self._redis.publish(self._channel(channel), message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[str]]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._channel(channel))

        async def messages() -> AsyncIterator[str]:
            while True:
                # a bounded wait (None when nothing came): the socket's read timeout never fires
                msg: dict[str, Any] | None = await pubsub.get_message(timeout=1.0)
                if msg is not None and msg.get("type") == "message":
                    data = msg["data"]
                    yield data.decode() if isinstance(data, bytes) else str(data)

        try:
            yield messages()
        finally:
            try:
                await pubsub.unsubscribe()
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(self._key(key))
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        px = max(1, int(ttl_s * 1000)) if ttl_s is not None else None
        await self._redis.set(self._key(key), value, px=px)

    async def set_if_absent(self, key: str, value: bytes, ttl_s: float) -> bool:
        # SET NX PX: one atomic command, whoever comes second gets None
        return bool(await self._redis.set(self._key(key), value, px=max(1, int(ttl_s * 1000)), nx=True))

    async def delete(self, key: str) -> None:
        await self._redis.delete(self._key(key))


def _where(url: str) -> str:
    """host:port of a Redis URL, without its password."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
