"""The embedded record store: one SQLite file (WAL), driven from one thread of its own.

Every call runs on the store's thread, so the event loop never blocks on the file and a
transaction is never interleaved with another coroutine's. Writes take ``BEGIN IMMEDIATE``, so a
budget check and its update are one atomic step also across processes on the same file
(``ragline serve`` and the ``ragline keys`` command, say).
"""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

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

T = TypeVar("T")

_SETTLE = _sql.SETTLE_USAGE.format(greatest="MAX")
_RELEASED = "RETURNING scope, win, amount_nano"
_IN_CHUNK = 500  # ids per "IN (...)" (SQLite allows 32766 parameters; keep statements small)


class SQLiteStore:
    """The record store in one SQLite file (created with its folder when missing)."""

    kind = "sqlite"

    def __init__(self, path: Path, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # -- plumbing ----------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise StoreError("the record store is not open")
        conn = self._conn
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, conn)
        except sqlite3.Error as e:
            raise StoreError(f"record store (SQLite {self.path.name}): {e}") from e

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def _open_sync(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".migrate-lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released if this process dies
            migrate("sqlite:///" + quote(str(self.path.resolve())), "sqlite")
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragline-store")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._open_sync)
        except sqlite3.Error as e:
            self._executor.shutdown()
            self._executor = None
            raise StoreError(f"cannot open the record store {self.path}: {e}") from e
        except BaseException:
            self._executor.shutdown()
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown()
        self._executor = None

    # -- tenants and keys ----------------------------------------------------------------------------

    async def create_tenant(self, tenant: Tenant) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                if conn.execute(_sql.SELECT_TENANT, (tenant.name,)).fetchone():
                    raise AlreadyExists(f"tenant {tenant.name!r} exists already")
                conn.execute(_sql.INSERT_TENANT, _sql.tenant_params(tenant))
                conn.execute(_sql.BUMP_REVISION)

        await self._run(run)

    async def update_tenant(self, tenant: Tenant) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                if conn.execute(_sql.UPDATE_TENANT, _sql.tenant_update_params(tenant)).rowcount == 0:
                    raise NotFound(f"no tenant {tenant.name!r}")
                conn.execute(_sql.BUMP_REVISION)

        await self._run(run)

    async def get_tenant(self, name: str) -> Tenant | None:
        row = await self._run(lambda c: c.execute(_sql.SELECT_TENANT, (name,)).fetchone())
        return _sql.tenant_from_row(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._run(lambda c: c.execute(_sql.SELECT_TENANTS).fetchall())
        return [_sql.tenant_from_row(r) for r in rows]

    async def create_key(self, key: KeyRecord) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                if not conn.execute(_sql.SELECT_TENANT, (key.tenant,)).fetchone():
                    raise NotFound(f"no tenant {key.tenant!r}")
                if conn.execute(_sql.SELECT_KEY, (key.key_id,)).fetchone():
                    raise AlreadyExists(f"key {key.key_id!r} exists already")
                conn.execute(_sql.INSERT_KEY, _sql.key_params(key))
                conn.execute(_sql.BUMP_REVISION)

        await self._run(run)

    async def update_key(self, key: KeyRecord) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                if conn.execute(_sql.UPDATE_KEY, _sql.key_update_params(key)).rowcount == 0:
                    raise NotFound(f"no key {key.key_id!r}")
                conn.execute(_sql.BUMP_REVISION)

        await self._run(run)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self._run(lambda c: c.execute(_sql.SELECT_KEY, (key_id,)).fetchone())
        return _sql.key_from_row(row) if row else None

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        def run(conn: sqlite3.Connection) -> list[Any]:
            if tenant is None:
                return conn.execute(_sql.SELECT_KEYS).fetchall()
            return conn.execute(_sql.SELECT_TENANT_KEYS, (tenant,)).fetchall()

        return [_sql.key_from_row(r) for r in await self._run(run)]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            with self._write(conn):
                changed = conn.execute(_sql.REVOKE_KEY, (at, key_id)).rowcount > 0
                if changed:
                    conn.execute(_sql.BUMP_REVISION)
                return changed

        return await self._run(run)

    async def revision(self) -> int:
        row = await self._run(lambda c: c.execute(_sql.SELECT_REVISION).fetchone())
        return int(row[0])

    # -- budgets -------------------------------------------------------------------------------------

    async def reserve(self, reservation_id: str, items: Sequence[BudgetItem], expires_at: float) -> bool:
        ordered = sorted(items)

        def run(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for it in ordered:
                    if conn.execute(_sql.RESERVE, _sql.reserve_params(it)).fetchone() is None:
                        conn.rollback()
                        return False
                conn.executemany(
                    _sql.INSERT_RESERVATION,
                    [(reservation_id, it.scope, it.window, it.amount_nano, expires_at) for it in ordered],
                )
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return True

        return await self._run(run)

    async def usage(self, scope: str, window: str) -> Usage:
        row = await self._run(lambda c: c.execute(_sql.SELECT_USAGE, (scope, window)).fetchone())
        return Usage(int(row[0]), int(row[1])) if row else Usage()

    async def commit_spend(self, settlements: Sequence[Settlement], records: Sequence[SpendRecord]) -> None:
        if not settlements and not records:
            return
        ids = list(dict.fromkeys(s.reservation_id for s in settlements))
        costs = [(scope, win, s.cost_nano) for s in settlements for scope, win in s.windows]
        rows = [r.row() for r in records]

        def run(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                released: list[tuple[str, str, int]] = []
                for i in range(0, len(ids), _IN_CHUNK):
                    chunk = ids[i : i + _IN_CHUNK]
                    marks = ", ".join("?" * len(chunk))
                    sql = f"DELETE FROM budget_reservations WHERE id IN ({marks}) {_RELEASED}"
                    released.extend(conn.execute(sql, chunk).fetchall())
                conn.executemany(_SETTLE, _sql.settle_totals(released, costs))
                conn.executemany(_sql.INSERT_SPEND, rows)

        await self._run(run)

    async def release_expired(self, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            with self._write(conn):
                released = conn.execute(_sql.DELETE_EXPIRED, (now,)).fetchall()
                conn.executemany(_SETTLE, _sql.settle_totals(released, ()))
                return len(released)

        return await self._run(run)

    async def spend_summary(
        self,
        start: float,
        end: float,
        group_by: Sequence[SpendGroup] = (),
        tenant: str | None = None,
        key_id: str | None = None,
    ) -> list[SpendRow]:
        sql, names = _sql.spend_summary_sql(group_by, tenant, key_id)
        params = _sql.summary_params(start, end, tenant, key_id)
        rows = await self._run(lambda c: c.execute(sql, params).fetchall())
        return [_sql.spend_row(r, names) for r in rows if r[len(names)]]
