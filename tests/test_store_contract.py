"""The record-store seam: one contract, run against SQLite and a real PostgreSQL server.

PostgreSQL comes from Debian (installed with apt-get when missing, tests/services.py), started
once per session on loopback; each test gets a fresh database.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ragline.store import (
    AlreadyExists,
    Budget,
    BudgetItem,
    KeyRecord,
    NotFound,
    RecordStore,
    Settlement,
    SpendRecord,
    StoreError,
    Tenant,
    Usage,
    build_store,
)
from ragline.store.migrate import applied
from ragline.store.postgres import PostgresStore, yoyo_url
from ragline.store.sqlite import SQLiteStore
from services import fresh_database

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RecordStore]:
    s: RecordStore
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "records.sqlite")
    else:
        s = PostgresStore(fresh_database(request.getfixturevalue("postgres_url")), pool_max=20)
    await s.open()
    yield s
    await s.close()


def _key(key_id: str, tenant: str = "acme", **kw: object) -> KeyRecord:
    return KeyRecord(key_id=key_id, secret_hash="ab" * 32, tenant=tenant, role="app", created_at=1.0, **kw)  # type: ignore[arg-type]


async def test_is_a_record_store(store: RecordStore) -> None:
    assert isinstance(store, RecordStore)
    assert store.kind in ("sqlite", "postgresql")


async def test_tenants_round_trip_and_names_are_unique(store: RecordStore) -> None:
    t = Tenant("acme", created_at=10.5, budget=Budget(5_000_000_000, "month"), rate_requests="60/minute")
    await store.create_tenant(t)
    assert await store.get_tenant("acme") == t
    assert await store.get_tenant("nope") is None
    with pytest.raises(AlreadyExists):
        await store.create_tenant(Tenant("acme", created_at=11.0))
    await store.create_tenant(Tenant("beta", created_at=12.0))
    assert [x.name for x in await store.list_tenants()] == ["acme", "beta"]
    changed = Tenant("acme", created_at=10.5, budget=None, rate_tokens="1000/hour", disabled=True)
    await store.update_tenant(changed)
    assert await store.get_tenant("acme") == changed
    with pytest.raises(NotFound):
        await store.update_tenant(Tenant("ghost", created_at=1.0))


async def test_keys_round_trip_list_update_and_revoke(store: RecordStore) -> None:
    await store.create_tenant(Tenant("acme", created_at=1.0))
    await store.create_tenant(Tenant("beta", created_at=1.0))
    k = _key(
        "k1",
        name="billing app",
        expires_at=99.5,
        models=("gpt-4o-mini", "rag/docs-*"),
        budget=Budget(1_000, "day"),
        rate_requests="10/second",
        rate_tokens="5000/minute",
    )
    await store.create_key(k)
    await store.create_key(_key("k2", tenant="beta"))
    assert await store.get_key("k1") == k
    assert await store.get_key("missing") is None
    with pytest.raises(AlreadyExists):
        await store.create_key(_key("k1"))
    with pytest.raises(NotFound):
        await store.create_key(_key("k3", tenant="ghost"))
    assert [x.key_id for x in await store.list_keys()] == ["k1", "k2"]
    assert [x.key_id for x in await store.list_keys("beta")] == ["k2"]
    updated = _key("k1", name="renamed", models=None, budget=None)
    await store.update_key(updated)
    assert await store.get_key("k1") == updated
    with pytest.raises(NotFound):
        await store.update_key(_key("ghost"))
    before = await store.revision()
    assert await store.revoke_key("k1", at=50.0) is True
    assert await store.revoke_key("k1", at=60.0) is False  # once
    assert await store.revoke_key("ghost", at=60.0) is False
    got = await store.get_key("k1")
    assert got is not None and got.revoked_at == 50.0
    assert await store.revision() == before + 1


async def test_revision_grows_with_every_change_to_keys_and_tenants(store: RecordStore) -> None:
    r0 = await store.revision()
    await store.create_tenant(Tenant("acme", created_at=1.0))
    await store.create_key(_key("k1"))
    await store.update_key(_key("k1", name="x"))
    await store.update_tenant(Tenant("acme", created_at=1.0, disabled=True))
    assert await store.revision() == r0 + 4
    with pytest.raises(AlreadyExists):
        await store.create_tenant(Tenant("acme", created_at=1.0))
    assert await store.revision() == r0 + 4  # a refused change changes nothing


async def test_reserve_admits_only_what_fits_and_settle_moves_reserved_to_spent(store: RecordStore) -> None:
    item = BudgetItem("key:k1", "day:2026-05-20", limit_nano=100, amount_nano=40)
    assert await store.reserve("r1", [item], expires_at=time.time() + 60)
    assert await store.reserve("r2", [item], expires_at=time.time() + 60)
    assert not await store.reserve("r3", [item], expires_at=time.time() + 60)  # 40+40+40 > 100
    assert await store.usage("key:k1", "day:2026-05-20") == Usage(spent_nano=0, reserved_nano=80)
    await store.commit_spend([Settlement("r1", (("key:k1", "day:2026-05-20"),), cost_nano=15)], [])
    assert await store.usage("key:k1", "day:2026-05-20") == Usage(spent_nano=15, reserved_nano=40)
    assert await store.reserve("r3", [item], expires_at=time.time() + 60)  # 15 + 40 + 40 <= 100
    # a single request larger than the whole budget is refused, and leaves no row behind
    big = BudgetItem("key:k9", "total", limit_nano=10, amount_nano=11)
    assert not await store.reserve("r4", [big], expires_at=time.time() + 60)
    assert await store.usage("key:k9", "total") == Usage()
    # zero fits an exhausted-to-the-limit budget
    full = BudgetItem("key:k8", "total", limit_nano=10, amount_nano=10)
    assert await store.reserve("r5", [full], expires_at=time.time() + 60)
    assert await store.reserve("r6", [BudgetItem("key:k8", "total", 10, 0)], expires_at=time.time() + 60)


async def test_a_reservation_over_several_budgets_is_all_or_nothing(store: RecordStore) -> None:
    key = BudgetItem("key:k1", "month:2026-05", limit_nano=1000, amount_nano=300)
    tenant = BudgetItem("tenant:acme", "day:2026-05-20", limit_nano=500, amount_nano=300)
    assert await store.reserve("a", [key, tenant], expires_at=time.time() + 60)
    assert not await store.reserve("b", [key, tenant], expires_at=time.time() + 60)  # tenant: 600 > 500
    assert await store.usage("key:k1", "month:2026-05") == Usage(0, 300)  # key untouched by the refusal
    assert await store.usage("tenant:acme", "day:2026-05-20") == Usage(0, 300)
    windows = (("key:k1", "month:2026-05"), ("tenant:acme", "day:2026-05-20"))
    await store.commit_spend([Settlement("a", windows, cost_nano=120)], [])
    assert await store.usage("key:k1", "month:2026-05") == Usage(120, 0)
    assert await store.usage("tenant:acme", "day:2026-05-20") == Usage(120, 0)


async def test_concurrent_reservations_admit_exactly_what_the_budget_fits(store: RecordStore) -> None:
    """100 concurrent reservations of 10 against a budget of 100: exactly 10 are admitted."""
    item = BudgetItem("tenant:acme", "total", limit_nano=100, amount_nano=10)
    expires = time.time() + 60
    results = await asyncio.gather(*(store.reserve(f"r{i}", [item], expires) for i in range(100)))
    assert sum(results) == 10
    assert await store.usage("tenant:acme", "total") == Usage(0, 100)
    both = [item, BudgetItem("key:k1", "total", limit_nano=1000, amount_nano=10)]
    more = await asyncio.gather(*(store.reserve(f"s{i}", both, expires) for i in range(20)))
    assert sum(more) == 0 and await store.usage("key:k1", "total") == Usage()


async def test_expired_reservations_are_released_once(store: RecordStore) -> None:
    item = BudgetItem("key:k1", "total", limit_nano=100, amount_nano=60)
    assert await store.reserve("dead", [item], expires_at=time.time() - 1)  # its process died
    assert await store.reserve("live", [BudgetItem("key:k1", "total", 100, 30)], expires_at=time.time() + 60)
    assert await store.release_expired(time.time()) == 1
    assert await store.release_expired(time.time()) == 0
    assert await store.usage("key:k1", "total") == Usage(0, 30)
    # settling a reservation that was already released adds its cost but releases nothing twice
    await store.commit_spend([Settlement("dead", (("key:k1", "total"),), cost_nano=5)], [])
    assert await store.usage("key:k1", "total") == Usage(5, 30)


def _spend(ts: float, tenant: str, key: str, model: str, cost: int, cached: bool = False) -> SpendRecord:
    return SpendRecord(ts, tenant, key, model, "dep-" + model, 10, 5, cost, cached, request_id=f"req-{ts}")


async def test_spend_is_summed_per_period_and_group(store: RecordStore) -> None:
    records = [
        _spend(100.0, "acme", "k1", "gpt", 30),
        _spend(101.0, "acme", "k1", "local", 0, cached=True),
        _spend(102.0, "acme", "k2", "gpt", 50),
        _spend(103.0, "beta", "k3", "gpt", 7),
        _spend(500.0, "acme", "k1", "gpt", 1000),  # outside the period
    ]
    await store.commit_spend([], records)
    (total,) = await store.spend_summary(100.0, 200.0)
    assert (total.requests, total.prompt_tokens, total.completion_tokens) == (4, 40, 20)
    assert (total.cost_nano, total.cached, total.group) == (87, 1, {})
    by_tenant = await store.spend_summary(100.0, 200.0, ["tenant"])
    assert [(r.group["tenant"], r.cost_nano, r.requests) for r in by_tenant] == [
        ("acme", 80, 3),
        ("beta", 7, 1),
    ]
    by_key_model = await store.spend_summary(100.0, 200.0, ["key", "model"], tenant="acme")
    assert [(r.group, r.cost_nano) for r in by_key_model] == [
        ({"key": "k2", "model": "gpt"}, 50),
        ({"key": "k1", "model": "gpt"}, 30),
        ({"key": "k1", "model": "local"}, 0),
    ]
    (dep,) = await store.spend_summary(0.0, 1000.0, ["deployment"], key_id="k3")
    assert dep.group == {"deployment": "dep-gpt"} and dep.cost_nano == 7
    assert await store.spend_summary(0.0, 50.0) == []
    with pytest.raises(ValueError, match="cannot group spend by 'colour'"):
        await store.spend_summary(0.0, 1.0, ["colour"])  # type: ignore[list-item]


async def test_settlements_and_records_commit_together(store: RecordStore) -> None:
    item = BudgetItem("key:k1", "total", 1000, 100)
    for i in range(300):
        assert await store.reserve(f"r{i}", [item], time.time() + 60) is (i < 10)
    settlements = [Settlement(f"r{i}", (("key:k1", "total"),), cost_nano=7) for i in range(10)]
    records = [_spend(1.0 + i, "acme", "k1", "gpt", 7) for i in range(1200)]
    await store.commit_spend(settlements, records)
    assert await store.usage("key:k1", "total") == Usage(70, 0)
    (row,) = await store.spend_summary(0.0, 10_000.0)
    assert row.requests == 1200 and row.cost_nano == 8400


async def test_strange_text_is_stored_as_data(store: RecordStore) -> None:
    name = "x'; DROP TABLE tenants; --"
    await store.create_tenant(Tenant(name, created_at=1.0))
    await store.create_key(_key("k'\"\\", tenant=name, name="$(rm -rf /) `id` 名前 "))
    assert [t.name for t in await store.list_tenants()] == [name]
    k = await store.get_key("k'\"\\")
    assert k is not None and k.name == "$(rm -rf /) `id` 名前 "


async def test_closed_store_refuses_politely(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "r.sqlite")
    with pytest.raises(StoreError, match="not open"):
        await s.revision()


# -- migrations -----------------------------------------------------------------------------------


async def test_sqlite_migrations_are_versioned_and_run_once(tmp_path: Path) -> None:
    path = tmp_path / "sub dir" / "records.sqlite"  # a space in the path, and a folder made on open
    for _ in range(2):
        s = SQLiteStore(path)
        await s.open()
        await s.close()
    assert applied("sqlite:///" + str(path)) == ["0001.access"]
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"tenants", "api_keys", "budget_usage", "budget_reservations", "spend"} <= tables


async def test_postgres_migrations_from_concurrent_starts_run_once(postgres_url: str) -> None:
    url = fresh_database(postgres_url)
    stores = [PostgresStore(url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))  # four replicas starting at once
    await stores[0].create_tenant(Tenant("acme", created_at=1.0))
    assert [t.name for t in await stores[3].list_tenants()] == ["acme"]
    for s in stores:
        await s.close()
    assert applied(yoyo_url(url)) == ["0001.access", "0002.reserve-function"]


async def test_a_schema_from_a_newer_ragline_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite"
    s = SQLiteStore(path)
    await s.open()
    await s.close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO _yoyo_migration (migration_hash, migration_id, applied_at_utc) "
            "VALUES ('f00d', '0099.future', '2030-01-01 00:00:00')"
        )
    with pytest.raises(StoreError, match="newer ragline"):
        await SQLiteStore(path).open()


async def test_unreachable_postgres_is_a_store_error_without_the_password() -> None:
    s = PostgresStore("postgresql://ragline:hunter2-secret@127.0.0.1:1/x", connect_timeout_s=2)
    with pytest.raises(StoreError) as e:
        await s.open()
    assert "hunter2-secret" not in str(e.value)


def test_factory_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    from ragline.config import load_settings

    s = build_store(load_settings(data_dir=tmp_path))
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "records.sqlite"
    s = build_store(load_settings(data_dir=tmp_path, store={"url": f"sqlite:///{tmp_path}/other.sqlite"}))
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "other.sqlite"
    pg = build_store(load_settings(data_dir=tmp_path, store={"url": "postgresql://u@h/db", "pool_max": 3}))
    assert isinstance(pg, PostgresStore)
    with pytest.raises(StoreError, match="unsupported scheme 'mysql'"):
        build_store(load_settings(data_dir=tmp_path, store={"url": "mysql://h/db"}))


async def test_a_missing_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragline.errors import MissingDependency
    from ragline.state.redis import RedisState

    monkeypatch.setitem(sys.modules, "psycopg_pool", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependency, match=r"pip install 'ragline\[postgres\]'"):
        await PostgresStore("postgresql://u@127.0.0.1:1/db").open()
    with pytest.raises(MissingDependency, match=r"pip install 'ragline\[redis\]'"):
        RedisState("redis://127.0.0.1:1/0")
