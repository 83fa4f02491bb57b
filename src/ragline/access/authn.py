"""Authentication: a presented key becomes a ``Principal``, without a database round trip per request.

Key lookups are cached per process (LRU, ``auth.key_cache_size``, each entry at most
``auth.key_cache_ttl_s`` old). Every change to a key or tenant bumps the store's revision; each
process polls it every ``auth.revision_poll_s`` (0.5 s) and drops its cache when it moved, so a
revocation takes effect everywhere within that. With Redis, changes are also published on the
``access`` channel and dropped at once. A lookup that was in flight while an invalidation arrived
is used for its request but not cached.

Failed authentications (malformed, unknown, revoked or expired keys) count against
``auth.failed_per_ip``; past it the IP is refused with 429 (even with a valid key) until the
window frees up: this process remembers the block, so a blocked IP costs no round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from ragline.access.errors import AuthThrottled, InvalidKey, PermissionDenied
from ragline.access.keys import MAX_PRESENTED, hash_key, key_id_of, matches
from ragline.access.principal import Principal
from ragline.access.ratelimit import Limiter
from ragline.config import AuthSettings
from ragline.errors import RaglineError
from ragline.state.base import SharedState
from ragline.store.base import RecordStore

log = logging.getLogger(__name__)

CHANNEL = "access"
"""The shared-state channel that carries ``key:<id>``, ``tenant:<name>`` or ``*`` on every change."""
BOOTSTRAP_KEY_ID = "bootstrap"


@dataclass(frozen=True, slots=True)
class _Entry:
    secret_hash: str | None
    """None: no such key (cached too, so unknown ids do not reach the store every time)."""
    principal: Principal | None
    revoked: bool
    disabled: bool
    loaded_at: float


class Authenticator:
    def __init__(
        self,
        store: RecordStore,
        state: SharedState,
        settings: AuthSettings | None = None,
        *,
        limiter: Limiter | None = None,
        admin_key: str | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._state = state
        self.settings = settings or AuthSettings()
        self._limiter = limiter
        self._clock = clock
        self._on_change = on_change
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._admin = Principal(BOOTSTRAP_KEY_ID, self.settings.default_tenant, "admin")
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._loading: dict[str, asyncio.Future[_Entry]] = {}
        self._generation = 0
        self._revision: int | None = None
        self._blocked: dict[str, tuple[float, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.lookups = 0
        """Store round trips made for key lookups (a test and a metric)."""

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the current revision and start watching for changes."""
        self._revision = await self._store.revision()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._poll(), name="ragline-auth-poll"))
        if self._state.kind != "memory":
            self._tasks.append(loop.create_task(self._listen(), name="ragline-auth-listen"))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def invalidate(self, key_id: str | None = None) -> None:
        """Forget one cached key, or all of them."""
        self._generation += 1
        if key_id is None:
            self._cache.clear()
        else:
            self._cache.pop(key_id, None)
        if self._on_change is not None:
            self._on_change()

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.settings.revision_poll_s)
            try:
                rev = await self._store.revision()
            except RaglineError as e:
                if not failing:
                    log.warning("cannot read the record store's revision (cached keys stay in use): %s", e)
                failing = True
                continue
            failing = False
            if rev != self._revision:
                self._revision = rev
                self.invalidate()

    async def _listen(self) -> None:
        while True:
            try:
                async with self._state.subscribe(CHANNEL) as messages:
                    self.invalidate()  # anything missed while not subscribed
                    async for m in messages:
                        self.invalidate(m[4:] if m.startswith("key:") else None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the poll still covers changes while Redis is away
                log.warning("access invalidation channel lost, resubscribing: %s", e)
                await asyncio.sleep(1.0)

    # -- authentication ------------------------------------------------------------------------------

    async def authenticate(self, presented: str | None, ip: str | None = None) -> Principal:
        """The principal of a presented key, or InvalidKey / PermissionDenied / AuthThrottled."""
        if ip is not None:
            self._check_blocked(ip)
        if not presented:
            raise InvalidKey("Missing API key: send Authorization: Bearer <key> or x-api-key.", "missing")
        if len(presented) > MAX_PRESENTED:
            await self._failed(ip, "malformed")
        digest = hash_key(presented)
        if self._admin_hash is not None and matches(digest, self._admin_hash):
            return self._admin
        key_id = key_id_of(presented)
        if key_id is None:
            await self._failed(ip, "malformed")
        entry = await self._entry(key_id)
        if entry.secret_hash is None or not matches(digest, entry.secret_hash) or entry.principal is None:
            await self._failed(ip, "unknown")
        p = entry.principal
        if entry.revoked:
            await self._failed(ip, "revoked", f"API key {key_id} has been revoked.")
        if p.expires_at is not None and self._clock() >= p.expires_at:
            await self._failed(ip, "expired", f"API key {key_id} has expired.")
        if entry.disabled:
            raise PermissionDenied(f"Tenant {p.tenant!r} is disabled.")
        return p

    async def _failed(self, ip: str | None, reason: str, message: str | None = None) -> NoReturn:
        rate = self.settings.failed_per_ip
        if ip is not None and rate and self._limiter is not None:
            over = await self._limiter.hit_once("auth-failures", ip, rate)
            if over is not None:
                retry = max(1, int(over.reset_s + 0.999))
                self._block(ip, retry)
                raise AuthThrottled("Too many failed authentications from this address.", retry)
        raise InvalidKey(message or "Incorrect API key provided.", reason)

    def _block(self, ip: str, retry_after_s: int) -> None:
        now = time.monotonic()
        if len(self._blocked) >= 10_000:
            self._blocked = {k: v for k, v in self._blocked.items() if v[0] > now}
        self._blocked[ip] = (now + retry_after_s, retry_after_s)

    def _check_blocked(self, ip: str) -> None:
        found = self._blocked.get(ip)
        if found is None:
            return
        until, _ = found
        now = time.monotonic()
        if now >= until:
            del self._blocked[ip]
            return
        raise AuthThrottled(
            "Too many failed authentications from this address.", max(1, int(until - now + 0.999))
        )

    # -- the cache -----------------------------------------------------------------------------------

    async def _entry(self, key_id: str) -> _Entry:
        now = time.monotonic()
        e = self._cache.get(key_id)
        if e is not None and now - e.loaded_at < self.settings.key_cache_ttl_s:
            self._cache.move_to_end(key_id)
            return e
        pending = self._loading.get(key_id)
        if pending is not None:  # one lookup per key at a time: wait for the one in flight
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this request was cancelled
                return await self._entry(key_id)  # the request that was loading it was: load again
        fut: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._loading[key_id] = fut
        generation = self._generation
        try:
            entry = await self._load(key_id, now)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._loading.pop(key_id, None)
        fut.set_result(entry)
        if generation == self._generation:  # no invalidation while loading: safe to keep
            self._cache[key_id] = entry
            self._cache.move_to_end(key_id)
            while len(self._cache) > self.settings.key_cache_size:
                self._cache.popitem(last=False)
        return entry

    async def _load(self, key_id: str, now: float) -> _Entry:
        self.lookups += 1
        key = await self._store.get_key(key_id)
        if key is None:
            return _Entry(None, None, False, False, now)
        tenant = await self._store.get_tenant(key.tenant)
        return _Entry(
            key.secret_hash,
            Principal.of(key, tenant),
            revoked=key.revoked_at is not None,
            disabled=tenant is None or tenant.disabled,
            loaded_at=now,
        )
