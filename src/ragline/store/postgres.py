"""The shared record store on PostgreSQL (psycopg 3, asyncio, a connection pool).

Budget reservations are single atomic statements (an ``INSERT ... ON CONFLICT DO UPDATE ... WHERE
spent + reserved + amount <= limit RETURNING``), so every replica sharing the database sees exact
budgets. Needs the ``postgres`` extra: ``pip install 'ragline[postgres]'``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ragline.optional import require
from ragline.store import _sql
from ragline.store.base import AlreadyExists, NotFound, StoreError
from ragline.store.migrate import migrate
from ragline.store.records import (
    BudgetItem,
    KeyRecord,
    Settlement,
    SpendGroup,
    SpendRecord,
    SpendRow,
    Tenant,
    Usage,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

_FEATURE = "the PostgreSQL record store (store.url=postgresql://...)"
#: pg_advisory_lock key held while migrating ("ragline" in ASCII): one replica migrates, the others wait.
_MIGRATION_LOCK = 0x7261676C696E65


def require_driver() -> None:
    """Raise MissingDependency (naming the ``postgres`` extra) unless psycopg and its pool import."""
    require("psycopg", extra="postgres", feature=_FEATURE)
    require("psycopg_pool", extra="postgres", feature=_FEATURE)


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


# One budget: the check, the update and the reservation's record in one statement (one round
# trip, atomic without an explicit transaction).
_RESERVE_ONE = _pg(
    f"WITH u AS ({_sql.RESERVE}) INSERT INTO budget_reservations (id, scope, win, amount_nano, expires_at) "
    "SELECT ?, ?, ?, ?, ? FROM u RETURNING 1"
)
_RESERVE_MANY = "SELECT ragline_reserve(%s, %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s)"
_SETTLE = _pg(_sql.SETTLE_USAGE.format(greatest="GREATEST"))
_RELEASE = "DELETE FROM budget_reservations WHERE id = ANY(%s) RETURNING scope, win, amount_nano"
_COPY_SPEND = (
    "COPY spend (ts, tenant, key_id, model, deployment, prompt_tokens, completion_tokens, cost_nano, "
    "cached, request_id) FROM STDIN"
)


def yoyo_url(url: str) -> str:
    """The same database as yoyo-migrations names it (its psycopg 3 backend)."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql+psycopg", *parts[1:]))


class PostgresStore:
    """The record store in a PostgreSQL database, given by URL (``postgresql://user:pw@host/db``)."""

    kind = "postgresql"

    def __init__(
        self, url: str, *, pool_min: int = 1, pool_max: int = 10, connect_timeout_s: float = 10.0
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("postgresql", "postgres"):
            raise StoreError(f"a PostgreSQL store URL starts with postgresql://, not {scheme}://")
        self.url = url
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._timeout = connect_timeout_s
        self._pool: AsyncConnectionPool[Any] | None = None

    def _migrate_sync(self) -> None:
        psycopg = require("psycopg", extra="postgres", feature=_FEATURE)
        with psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self._timeout))) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
            try:
                migrate(yoyo_url(self.url), "postgresql")
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool_module = require("psycopg_pool", extra="postgres", feature=_FEATURE)
        psycopg = require("psycopg", extra="postgres", feature=_FEATURE)
        try:
            await asyncio.to_thread(self._migrate_sync)
        except psycopg.Error as e:
            raise StoreError(f"cannot open the PostgreSQL record store: {_reason(e)}") from e
        pool = pool_module.AsyncConnectionPool(
            self.url,
            min_size=self._pool_min,
            max_size=self._pool_max,
            kwargs={"autocommit": True},
            timeout=self._timeout,
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except Exception as e:
            await pool.close()
            raise StoreError(f"cannot connect to the PostgreSQL record store: {_reason(e)}") from e
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreError("the record store is not open")
        import psycopg
        import psycopg_pool

        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.errors.UniqueViolation as e:
            raise AlreadyExists(_reason(e)) from e
        except psycopg.errors.ForeignKeyViolation as e:
            raise NotFound(_reason(e)) from e
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            raise StoreError(f"record store (PostgreSQL): {_reason(e)}") from e

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        async with self._conn() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    # -- tenants and keys ----------------------------------------------------------------------------

    async def create_tenant(self, tenant: Tenant) -> None:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(
                _pg(_sql.INSERT_TENANT + " ON CONFLICT (name) DO NOTHING RETURNING 1"),
                _sql.tenant_params(tenant),
            )
            if await cur.fetchone() is None:
                raise AlreadyExists(f"tenant {tenant.name!r} exists already")
            await conn.execute(_sql.BUMP_REVISION)

    async def update_tenant(self, tenant: Tenant) -> None:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(_pg(_sql.UPDATE_TENANT), _sql.tenant_update_params(tenant))
            if cur.rowcount == 0:
                raise NotFound(f"no tenant {tenant.name!r}")
            await conn.execute(_sql.BUMP_REVISION)

    async def get_tenant(self, name: str) -> Tenant | None:
        row = await self._fetchone(_pg(_sql.SELECT_TENANT), (name,))
        return _sql.tenant_from_row(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        return [_sql.tenant_from_row(r) for r in await self._fetchall(_sql.SELECT_TENANTS)]

    async def create_key(self, key: KeyRecord) -> None:
        async with self._conn() as conn, conn.transaction():
            if await (await conn.execute(_pg(_sql.SELECT_TENANT), (key.tenant,))).fetchone() is None:
                raise NotFound(f"no tenant {key.tenant!r}")
            cur = await conn.execute(
                _pg(_sql.INSERT_KEY + " ON CONFLICT (key_id) DO NOTHING RETURNING 1"), _sql.key_params(key)
            )
            if await cur.fetchone() is None:
                raise AlreadyExists(f"key {key.key_id!r} exists already")
            await conn.execute(_sql.BUMP_REVISION)

    async def update_key(self, key: KeyRecord) -> None:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(_pg(_sql.UPDATE_KEY), _sql.key_update_params(key))
            if cur.rowcount == 0:
                raise NotFound(f"no key {key.key_id!r}")
            await conn.execute(_sql.BUMP_REVISION)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self._fetchone(_pg(_sql.SELECT_KEY), (key_id,))
        return _sql.key_from_row(row) if row else None

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        if tenant is None:
            rows = await self._fetchall(_sql.SELECT_KEYS)
        else:
            rows = await self._fetchall(_pg(_sql.SELECT_TENANT_KEYS), (tenant,))
        return [_sql.key_from_row(r) for r in rows]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(_pg(_sql.REVOKE_KEY), (at, key_id))
            if cur.rowcount == 0:
                return False
            await conn.execute(_sql.BUMP_REVISION)
            return True

    async def revision(self) -> int:
        row = await self._fetchone(_sql.SELECT_REVISION)
        return int(row[0]) if row else 0

    # -- budgets -------------------------------------------------------------------------------------

    async def reserve(self, reservation_id: str, items: Sequence[BudgetItem], expires_at: float) -> bool:
        ordered = sorted(items)  # every writer locks usage rows in one order: no deadlocks
        if not ordered:
            return True
        if len(ordered) == 1:
            params = self._reserve_one_params(reservation_id, ordered[0], expires_at)
            return await self._fetchone(_RESERVE_ONE, params) is not None
        # several budgets: all or nothing in one call (migration 0002's function), one round trip
        row = await self._fetchone(
            _RESERVE_MANY,
            (
                reservation_id,
                [it.scope for it in ordered],
                [it.window for it in ordered],
                [it.amount_nano for it in ordered],
                [it.limit_nano for it in ordered],
                expires_at,
            ),
        )
        return bool(row and row[0])

    @staticmethod
    def _reserve_one_params(reservation_id: str, it: BudgetItem, expires_at: float) -> tuple[Any, ...]:
        return (*_sql.reserve_params(it), reservation_id, it.scope, it.window, it.amount_nano, expires_at)

    async def usage(self, scope: str, window: str) -> Usage:
        row = await self._fetchone(_pg(_sql.SELECT_USAGE), (scope, window))
        return Usage(int(row[0]), int(row[1])) if row else Usage()

    async def commit_spend(self, settlements: Sequence[Settlement], records: Sequence[SpendRecord]) -> None:
        if not settlements and not records:
            return
        ids = list(dict.fromkeys(s.reservation_id for s in settlements))
        costs = [(scope, win, s.cost_nano) for s in settlements for scope, win in s.windows]
        async with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
            released: list[tuple[str, str, int]] = []
            if ids:
                await cur.execute(_RELEASE, (ids,))
                released = [(r[0], r[1], int(r[2])) for r in await cur.fetchall()]
            totals = _sql.settle_totals(released, costs)
            if totals:
                await cur.executemany(_SETTLE, totals)
            if records:
                async with cur.copy(_COPY_SPEND) as copy:
                    for r in records:
                        await copy.write_row(r.row())

    async def release_expired(self, now: float) -> int:
        async with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(_pg(_sql.DELETE_EXPIRED), (now,))
            released = [(r[0], r[1], int(r[2])) for r in await cur.fetchall()]
            totals = _sql.settle_totals(released, ())
            if totals:
                await cur.executemany(_SETTLE, totals)
            return len(released)

    async def spend_summary(
        self,
        start: float,
        end: float,
        group_by: Sequence[SpendGroup] = (),
        tenant: str | None = None,
        key_id: str | None = None,
    ) -> list[SpendRow]:
        sql, names = _sql.spend_summary_sql(group_by, tenant, key_id)
        rows = await self._fetchall(_pg(sql), _sql.summary_params(start, end, tenant, key_id))
        return [_sql.spend_row(r, names) for r in rows if r[len(names)]]


def _reason(e: BaseException) -> str:
    """A driver error in one line, without the connection string (it may hold a password)."""
    diag = getattr(e, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = str(e).strip()
    return str(primary or (text.splitlines()[0] if text else type(e).__name__))
