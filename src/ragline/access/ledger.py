"""Where budget reservations are counted: the seam between budgets and their backends.

A reservation must be checked and counted in one atomic step against every budget it draws on;
its settlement releases it and adds the real cost. The spend itself (``budget_usage.spent_nano``
and the spend log) is always written to the record store, in batches, by the spend writer. What
differs is where the *reservations* live, since they are on every request's path:

- ``StoreLedger``: in the record store (one round trip and one commit per request). Any number of
  replicas over one PostgreSQL, without Redis.
- ``MemoryLedger``: in this process, over the spent totals read once from the store. The embedded
  default (SQLite): exact because this process is the only one reserving against that file; it
  takes an exclusive lock on it, and a second server that reserves against the same records file
  is refused (503) — one that only reads keys, like the CLI, is not.
- ``RedisLedger``: in Redis (one Lua script per request, atomic across every budget of the
  request, exact across replicas), over the spent totals read once from the store per window.

Reservations that are never settled (their process died) expire: ``MemoryLedger`` and
``StoreLedger`` through the budget sweeper, ``RedisLedger`` inside its own reserve script.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ragline.state.base import SharedState, StateError
from ragline.state.redis import RedisState, ScriptCall
from ragline.store.base import RecordStore, StoreError
from ragline.store.records import BudgetItem, Settlement, Usage
from ragline.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class BudgetLedger(Protocol):
    kind: str
    """``store``, ``memory`` or ``redis``."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def reserve(self, reservation_id: str, items: Sequence[BudgetItem], expires_at: float) -> bool:
        """Reserve every item's amount, or none of them (False: one does not fit its limit)."""

    def settle(self, settlement: Settlement, reserved_nano: int) -> None:
        """Release a reservation of ``reserved_nano`` per window and count its real cost (never blocks)."""

    async def usage(self, scope: str, window: str) -> Usage:
        """What a window has spent and holds reserved, as this ledger counts it."""

    async def release_expired(self, now: float) -> int:
        """Release reservations whose time ran out; how many."""


class StoreLedger:
    """Reservations in the record store; the spend writer's commit releases them."""

    kind = "store"

    def __init__(self, store: RecordStore) -> None:
        self._store = store

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def reserve(self, reservation_id: str, items: Sequence[BudgetItem], expires_at: float) -> bool:
        return await self._store.reserve(reservation_id, items, expires_at)

    def settle(self, settlement: Settlement, reserved_nano: int) -> None:
        return None  # commit_spend deletes the reservation rows and adds the cost, in one transaction

    async def usage(self, scope: str, window: str) -> Usage:
        return await self._store.usage(scope, window)

    async def release_expired(self, now: float) -> int:
        return await self._store.release_expired(now)


@dataclass(slots=True)
class _Window:
    spent: int
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class _Held:
    expires_at: float
    items: tuple[tuple[str, str, int], ...]
    """(scope, window, amount) per budget."""


class MemoryLedger:
    """Reservations in this process's memory, over spent totals read from the store once per window.

    Check-and-count runs without an ``await`` in between, so it is atomic on the event loop. A
    window's spent total is read from the store the first time it is needed; after that this
    process is the only writer of it (its settlements go to the store through the spend writer),
    so memory and store agree. The exclusive lock on ``lock_path`` makes sure of that.
    """

    kind = "memory"

    def __init__(self, store: RecordStore, lock_path: Path | None = None) -> None:
        self._store = store
        self._lock_path = lock_path
        self._lock_fd: int | None = None
        self._windows: dict[tuple[str, str], _Window] = {}
        self._held: dict[str, _Held] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[_Window]] = {}

    async def open(self) -> None:
        return None

    async def _own(self) -> None:
        """Take the records file's budget lock, the first time a budget is used (a process that never
        reserves, like a second one that only manages keys, does not need it)."""
        if self._lock_path is None or self._lock_fd is not None:
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                "another ragline server uses budgets on this records file, and counts them in its "
                "memory. Run one server per data_dir, or share a PostgreSQL store (store.url) "
                "between replicas"
            ) from None
        self._lock_fd = fd
        # reservations left in the store by an earlier process that reserved there: nobody else
        # reserves against this file now, so all of them are stale
        await self._store.release_expired(float("inf"))

    async def close(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the lock

    async def _window(self, scope: str, window: str) -> _Window:
        key = (scope, window)
        found = self._windows.get(key)
        if found is not None:
            return found
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            try:
                usage = await self._store.usage(scope, window)
            except BaseException as e:
                del self._loading[key]
                pending.set_exception(e)
                pending.exception()  # retrieved: no "never retrieved" warning when nobody else waits
                raise
            found = self._windows.setdefault(key, _Window(usage.spent_nano))
            del self._loading[key]
            pending.set_result(found)
            return found
        return await asyncio.shield(pending)

    async def reserve(self, reservation_id: str, items: Sequence[BudgetItem], expires_at: float) -> bool:
        if self._lock_fd is None:
            await self._own()
        windows = [await self._window(it.scope, it.window) for it in items]
        # no await from here on: the check and the count are one step
        for w, it in zip(windows, items, strict=True):
            if w.spent + w.reserved + it.amount_nano > it.limit_nano:
                return False
        for w, it in zip(windows, items, strict=True):
            w.reserved += it.amount_nano
        self._held[reservation_id] = _Held(
            expires_at, tuple((it.scope, it.window, it.amount_nano) for it in items)
        )
        return True

    def settle(self, settlement: Settlement, reserved_nano: int) -> None:
        held = self._held.pop(settlement.reservation_id, None)
        if held is not None:
            for scope, window, amount in held.items:
                w = self._windows.get((scope, window))
                if w is not None:
                    w.reserved -= amount
        for scope, window in settlement.windows:
            w = self._windows.get((scope, window))
            if w is not None:
                w.spent += settlement.cost_nano

    async def usage(self, scope: str, window: str) -> Usage:
        w = await self._window(scope, window)
        return Usage(w.spent, w.reserved)

    async def release_expired(self, now: float) -> int:
        expired = [rid for rid, h in self._held.items() if h.expires_at <= now]
        for rid in expired:
            for scope, window, amount in self._held.pop(rid).items:
                w = self._windows.get((scope, window))
                if w is not None:
                    w.reserved -= amount
        # windows nobody holds anything in are read again from the store when next needed: bounded
        # memory, and old windows (yesterday's, last month's) go
        held = {(s, w) for h in self._held.values() for s, w, _ in h.items}
        for key in [k for k, w in self._windows.items() if w.reserved == 0 and k not in held]:
            del self._windows[key]
        return len(expired)


# KEYS: per budget, its hash (spent, reserved) and its sorted set of reservations ("<id>|<amount>",
# scored by expiry). ARGV: member, expires_at, now, amount, ttl, then each budget's limit.
# Returns {1, 0} reserved; {0, i} budget i does not fit; {-1, i} budget i has no spent total yet.
_RESERVE_LUA = """
local n = #KEYS / 2
local member, exp, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local amount, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('HEXISTS', h, 'spent') == 0 then return {-1, i} end
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #old > 0 then
    local freed = 0
    for _, m in ipairs(old) do freed = freed + tonumber(string.match(m, '|(%d+)$')) end
    redis.call('HINCRBY', h, 'reserved', -freed)
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  end
end
for i = 1, n do
  local h = KEYS[2 * i - 1]
  local spent = tonumber(redis.call('HGET', h, 'spent'))
  local reserved = tonumber(redis.call('HGET', h, 'reserved') or '0')
  if spent + reserved + amount > tonumber(ARGV[5 + i]) then return {0, i} end
end
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('HINCRBY', h, 'reserved', amount)
  redis.call('ZADD', z, exp, member)
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', z, ttl)
end
return {1, 0}
"""

# KEYS: as above, per window of the settlement. ARGV: member, reserved amount, cost.
_SETTLE_LUA = """
local member, amount, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('ZREM', z, member) == 1 then redis.call('HINCRBY', h, 'reserved', -amount) end
  if redis.call('HEXISTS', h, 'spent') == 1 then redis.call('HINCRBY', h, 'spent', cost) end
end
return 1
"""

# KEYS: one hash. ARGV: the spent total read from the store, ttl.
_SEED_LUA = """
redis.call('HSETNX', KEYS[1], 'spent', ARGV[1])
redis.call('HSETNX', KEYS[1], 'reserved', 0)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

SETTLE_LINGER_S = 0.005
"""After a quiet spell, settlements wait this long for others to share their round trip (the
budget they free is free that much later)."""

WINDOW_TTL_S = 86_400
"""A budget window's counters in Redis expire after a day without a request (then they are read
again from the store); a reservation lives far shorter than that."""


class RedisLedger:
    """Reservations in Redis, atomic across every budget of a request and every replica."""

    kind = "redis"

    def __init__(self, store: RecordStore, state: RedisState) -> None:
        self._store = store
        self._state = state
        self._redis: Redis = state.client
        redis = self._redis
        self._prefix = f"{state.prefix}:budget"
        self._errors = state.errors
        self._reserve = redis.register_script(_RESERVE_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)
        self._seed = redis.register_script(_SEED_LUA)
        self._queue: deque[tuple[Settlement, int]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def _keys(self, scope: str, window: str) -> tuple[str, str]:
        base = f"{self._prefix}:{scope}:{window}"
        return base, base + ":r"

    async def open(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ragline-budget-settle")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    def reserve_call(self, reservation_id: str, items: Sequence[BudgetItem], expires_at: float) -> ScriptCall:
        """The reserve script's call, for a pipeline with other scripts; its reply goes to ``reserved``."""
        keys = [k for it in items for k in self._keys(it.scope, it.window)]
        amount = items[0].amount_nano  # one request's maximum cost, the same in each of its budgets
        args: list[Any] = [f"{reservation_id}|{amount}", expires_at, time.time(), amount, WINDOW_TTL_S]
        args += [it.limit_nano for it in items]
        return self._reserve, keys, args

    async def reserved(
        self, reply: Any, reservation_id: str, items: Sequence[BudgetItem], expires_at: float
    ) -> bool:
        """Whether the reserve script's ``reply`` reserved; when a budget's spent total had to be read
        from the store first (the script did nothing then), reads it and reserves again."""
        for _ in range(3):
            ok, which = (int(x) for x in reply)
            if ok != -1:
                return ok == 1
            it = items[which - 1]
            usage = await self._store.usage(it.scope, it.window)
            seed_keys = [self._keys(it.scope, it.window)[0]]
            try:
                await self._state.eval_many([(self._seed, seed_keys, [usage.spent_nano, WINDOW_TTL_S])])
                (reply,) = await self._state.eval_many([self.reserve_call(reservation_id, items, expires_at)])
            except self._errors as e:
                raise StateError(f"budget reservation in Redis failed: {type(e).__name__}") from e
        raise StateError("budget reservation in Redis failed: its totals keep disappearing")

    async def reserve(self, reservation_id: str, items: Sequence[BudgetItem], expires_at: float) -> bool:
        try:
            (reply,) = await self._state.eval_many([self.reserve_call(reservation_id, items, expires_at)])
        except self._errors as e:
            raise StateError(f"budget reservation in Redis failed: {type(e).__name__}") from e
        return await self.reserved(reply, reservation_id, items, expires_at)

    def settle(self, settlement: Settlement, reserved_nano: int) -> None:
        self._queue.append((settlement, reserved_nano))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                if not self._closing:  # gather what arrives meanwhile: one round trip for many
                    await asyncio.sleep(SETTLE_LINGER_S)
                continue
            batch = [self._queue.popleft() for _ in range(min(500, len(self._queue)))]
            calls: list[ScriptCall] = []
            for st, reserved in batch:
                keys = [k for scope, window in st.windows for k in self._keys(scope, window)]
                calls.append(
                    (self._settle, keys, [f"{st.reservation_id}|{reserved}", reserved, st.cost_nano])
                )
            try:
                await self._state.eval_many(calls)
            except self._errors as e:
                # the reservations expire on their own; the spent totals are read again from the
                # store when their counters expire
                n, kind = len(batch), type(e).__name__
                log.warning("could not settle %d budget reservations in Redis: %s", n, kind)

    async def usage(self, scope: str, window: str) -> Usage:
        h, _ = self._keys(scope, window)
        try:
            spent, reserved = await self._redis.hmget(h, ["spent", "reserved"])  # type: ignore[misc]
        except self._errors as e:
            raise StateError(f"budget usage in Redis failed: {type(e).__name__}") from e
        if spent is None:
            return await self._store.usage(scope, window)
        return Usage(int(spent), int(reserved or 0))

    async def release_expired(self, now: float) -> int:
        return 0  # each reserve script releases its budgets' expired reservations first


def build_ledger(store: RecordStore, state: SharedState) -> BudgetLedger:
    """Redis when the shared state is Redis; memory over a SQLite store; the store itself otherwise."""
    if isinstance(state, RedisState):
        return RedisLedger(store, state)
    if isinstance(store, SQLiteStore):
        return MemoryLedger(store, store.path.with_name(store.path.name + ".budget-lock"))
    return StoreLedger(store)
