"""Access control without HTTP: keys, tenants, roles, allow-lists, budgets, spend and revocation.

Each behaviour runs on the embedded backends (SQLite + in-process state) and on the shared ones
(a real PostgreSQL + a real Redis, tests/services.py). "Replicas" are separate AccessControl
objects over the same store and state, as two `ragline serve` processes would be.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ragline.access import (
    AccessControl,
    AuthThrottled,
    BadRequest,
    BudgetExceeded,
    InvalidKey,
    PermissionDenied,
    PriceTable,
    Principal,
    window_of,
)
from ragline.access.bootstrap import load_admin_key
from ragline.access.keys import generate_key, hash_key, key_id_of, matches
from ragline.access.models import check_patterns, model_allowed
from ragline.config import AuthSettings, PricesSettings, Settings, load_settings
from ragline.errors import ConfigError
from ragline.store import NotFound, StoreError, Usage, usd_to_nano
from services import fresh_database

pytestmark = pytest.mark.timeout(120)
ADMIN_KEY = "bootstrap-admin-key-0123456789abcdef"

Factory = Callable[..., Awaitable[AccessControl]]


@pytest.fixture(params=["embedded", "shared"])
async def make_access(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    """Build started AccessControl "replicas" over one store and one state (extra kwargs: settings)."""
    base: dict[str, Any] = {"data_dir": tmp_path / "data", "auth": {"revision_poll_s": 0.2}}
    if request.param == "shared":
        base["store"] = {"url": fresh_database(request.getfixturevalue("postgres_url"))}
        base["state"] = {
            "url": request.getfixturevalue("redis_url"),
            "key_prefix": f"t{uuid.uuid4().hex[:10]}",
        }
    made: list[AccessControl] = []

    async def factory(**overrides: Any) -> AccessControl:
        merged = {**base, **overrides}
        if "auth" in overrides:
            merged["auth"] = {**base["auth"], **overrides["auth"]}
        ac = AccessControl(load_settings(**merged), admin_key=ADMIN_KEY)
        await ac.start()
        made.append(ac)
        return ac

    yield factory
    for ac in made:
        await ac.close()


# -- keys, patterns, prices: plain functions ----------------------------------------------------------


def test_keys_are_random_prefixed_and_parse_back_to_their_id() -> None:
    key, key_id = generate_key()
    assert key.startswith("rl-") and len(key) == 59 and key_id_of(key) == key_id
    assert key != generate_key()[0]
    assert matches(hash_key(key), hash_key(key)) and not matches(hash_key(key), hash_key(key + "x"))
    assert len(hash_key(key)) == 64 and key not in hash_key(key)


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "garbage",
        "Bearer rl-abc",
        "rl-" + "a" * 12 + "_" + "b" * 42,
        "rl-" + "A" * 12 + "_" + "b" * 43,  # ids are lowercase
        "rl-" + "a" * 12 + "_" + "b" * 42 + "é",
        "rl-aaaaaaaaaaaa_' OR '1'='1'; DROP TABLE api_keys; --aaaaaaa",
        "rl-aaaaaaaaaaaa_$(rm -rf /)`id`aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "rl-" + "a" * 12 + "_" + "b" * 43 + "\n",
        "x" * 100_000,
    ],
)
def test_malformed_keys_have_no_id(presented: str) -> None:
    assert key_id_of(presented) is None


def test_model_allow_lists() -> None:
    allowed = check_patterns(["gpt-4o-mini", "local", "rag/team-*", "rag/docs", "local"])
    assert allowed == ("gpt-4o-mini", "local", "rag/team-*", "rag/docs")
    assert model_allowed(allowed, "gpt-4o-mini") and model_allowed(allowed, "local")
    assert model_allowed(allowed, "rag/team-a") and model_allowed(allowed, "rag/docs")
    assert not model_allowed(allowed, "gpt-4o") and not model_allowed(allowed, "rag/other")
    assert not model_allowed(allowed, "rag/docs2") and not model_allowed((), "local")
    assert model_allowed(None, "anything")
    for bad in ("gpt-*", "", " ", "../x", "a b"):
        with pytest.raises(ValueError):
            check_patterns([bad])


def test_prices_per_deployment_model_and_default() -> None:
    prices = PriceTable(
        PricesSettings(
            models={"gpt": {"input_per_million": 2.5, "output_per_million": 10}},
            deployments={"cheap-gpt": {"input_per_million": 0.15, "output_per_million": 0.6}},
        )
    )
    assert prices.cost_nano("gpt", None, 1000, 100) == usd_to_nano("0.0035")  # 1000*2.5e-6 + 100*1e-5
    assert prices.cost_nano("gpt", "cheap-gpt", 1000, 100) == usd_to_nano("0.00021")
    assert prices.cost_nano("local", None, 10**6, 10**6) == 0  # not listed: the default, free
    assert prices.cost_nano("gpt", "unknown-dep", 1, 0) == 2500  # the model's price
    assert prices.max_cost_nano("gpt", 1000, 100, ["cheap-gpt", "other"]) == usd_to_nano("0.0035")
    assert (
        prices.cost_nano("gpt", None, 1, 0) == 2500
        and PriceTable(PricesSettings()).cost_nano("x", None, 5, 5) == 0
    )
    tiny = PriceTable(PricesSettings(default={"input_per_million": 0.0001}))
    assert tiny.cost_nano("m", None, 1, 0) == 1  # 0.1 nano-dollars, rounded up: never free by rounding


def test_budget_windows_are_utc_days_months_or_total() -> None:
    ts = 1_779_235_200.0  # 2026-05-20 00:00:00 UTC
    assert window_of("day", ts) == "day:2026-05-20" and window_of("day", ts - 1) == "day:2026-05-19"
    assert window_of("month", ts) == "month:2026-05" and window_of("total", ts) == "total"


def test_bootstrap_admin_key_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert load_admin_key(AuthSettings(), {}) is None
    assert load_admin_key(AuthSettings(), {"RAGLINE_ADMIN_KEY": ADMIN_KEY}) == ADMIN_KEY
    f = tmp_path / "admin.key"
    f.write_text(ADMIN_KEY + "\n")
    assert load_admin_key(AuthSettings(admin_key_file=f), {}) == ADMIN_KEY
    other = "x" * 40
    assert load_admin_key(AuthSettings(admin_key_file=f), {"RAGLINE_ADMIN_KEY": other}) == other  # env wins
    with pytest.raises(ConfigError, match="at least 32"):
        load_admin_key(AuthSettings(), {"RAGLINE_ADMIN_KEY": "short"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_admin_key(AuthSettings(admin_key_file=tmp_path / "missing"), {})


def test_the_admin_key_variable_is_not_an_unknown_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGLINE_ADMIN_KEY", ADMIN_KEY)
    assert isinstance(load_settings(), Settings)


# -- authentication -----------------------------------------------------------------------------------


async def test_a_created_key_authenticates_and_wrong_ones_do_not(make_access: Factory) -> None:
    ac = await make_access()
    await ac.admin.create_tenant("acme")
    created = await ac.admin.create_key("acme", name="billing", models=["gpt", "rag/acme-*"])
    p = await ac.auth.authenticate(created.key, "10.0.0.1")
    assert (p.key_id, p.tenant, p.role, p.is_admin) == (created.record.key_id, "acme", "app", False)
    assert p.may_use("gpt") and p.may_use("rag/acme-docs") and not p.may_use("rag/other")
    stored = await ac.store.get_key(created.record.key_id)
    assert stored is not None and created.key not in repr(stored)  # only the hash is kept
    wrong = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")
    for bad, reason in ((wrong, "unknown"), ("garbage", "malformed"), (generate_key()[0], "unknown")):
        with pytest.raises(InvalidKey) as e:
            await ac.auth.authenticate(bad, "10.0.0.1")
        assert e.value.reason == reason and e.value.status_code == 401 and e.value.code == "invalid_api_key"
        assert bad not in str(e.value)
    with pytest.raises(InvalidKey) as e:
        await ac.auth.authenticate(None, "10.0.0.1")
    assert e.value.reason == "missing"


async def test_the_bootstrap_admin_key_is_an_admin_of_the_default_tenant(make_access: Factory) -> None:
    ac = await make_access()
    p = await ac.auth.authenticate(ADMIN_KEY, None)
    assert p.is_admin and p.tenant == "default" and p.key_id == "bootstrap"
    assert [t.name for t in await ac.admin.list_tenants()] == ["default"]  # made at start
    assert await ac.auth_configured()


async def test_the_hot_path_does_not_read_the_store_per_request(make_access: Factory) -> None:
    ac = await make_access()
    created = await ac.admin.create_key("default")
    await asyncio.gather(*(ac.auth.authenticate(created.key, None) for _ in range(50)))  # concurrent misses
    for _ in range(1000):
        await ac.auth.authenticate(created.key, None)
    assert ac.auth.lookups == 1


async def test_a_cancelled_lookup_does_not_fail_the_requests_waiting_on_it(make_access: Factory) -> None:
    ac = await make_access()
    created = await ac.admin.create_key("default")
    first = asyncio.create_task(ac.auth.authenticate(created.key, None))
    await asyncio.sleep(0)  # first is reading the key from the store
    second = asyncio.create_task(ac.auth.authenticate(created.key, None))
    await asyncio.sleep(0)  # second waits for first's lookup
    first.cancel()  # its client went away
    assert (await second).key_id == created.record.key_id
    with pytest.raises(asyncio.CancelledError):
        await first
    assert ac.auth.lookups == 2  # second read it again itself


async def test_revocation_reaches_every_replica_within_a_second(make_access: Factory) -> None:
    a = await make_access(auth={"revision_poll_s": 0.5})
    b = await make_access(auth={"revision_poll_s": 0.5})
    created = await a.admin.create_key("default")
    for ac in (a, b):
        await ac.auth.authenticate(created.key, None)  # cached in both
    t0 = time.monotonic()
    assert await a.admin.revoke_key(created.record.key_id)
    refused: dict[int, float] = {}
    while len(refused) < 2 and time.monotonic() - t0 < 2.0:
        for i, ac in enumerate((a, b)):
            if i not in refused:
                try:
                    await ac.auth.authenticate(created.key, None)
                except InvalidKey as e:
                    assert e.reason == "revoked" and created.record.key_id in str(e)
                    refused[i] = time.monotonic() - t0
        await asyncio.sleep(0.01)
    assert len(refused) == 2 and max(refused.values()) < 1.0, refused


async def test_expired_keys_and_disabled_tenants_are_refused(make_access: Factory) -> None:
    ac = await make_access()
    await ac.admin.create_tenant("acme")
    soon = await ac.admin.create_key("acme", expires_at=time.time() + 0.3)
    await ac.auth.authenticate(soon.key, None)
    await asyncio.sleep(0.35)
    with pytest.raises(InvalidKey) as e:
        await ac.auth.authenticate(soon.key, None)  # cached, and still refused: expiry is checked per request
    assert e.value.reason == "expired"
    key = await ac.admin.create_key("acme")
    await ac.admin.update_tenant("acme", disabled=True)
    await asyncio.sleep(0.5)
    with pytest.raises(PermissionDenied, match="disabled"):
        await ac.auth.authenticate(key.key, None)


async def test_failed_authentication_is_rate_limited_per_ip(make_access: Factory) -> None:
    ac = await make_access(auth={"failed_per_ip": "5/minute"})
    good = await ac.admin.create_key("default")
    for _ in range(5):
        with pytest.raises(InvalidKey):
            await ac.auth.authenticate(generate_key()[0], "6.6.6.6")
    with pytest.raises(AuthThrottled) as e:
        await ac.auth.authenticate(generate_key()[0], "6.6.6.6")
    assert e.value.status_code == 429 and 1 <= e.value.retry_after_s <= 60
    lookups = ac.auth.lookups
    with pytest.raises(AuthThrottled):
        await ac.auth.authenticate(good.key, "6.6.6.6")  # blocked: even a valid key, and no store read
    assert ac.auth.lookups == lookups
    assert (await ac.auth.authenticate(good.key, "7.7.7.7")).key_id == good.record.key_id


# -- admin validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../etc", "a/b", "a\\b", "", "UPPER", "x" * 64, "'; DROP TABLE tenants; --", "é"]
)
async def test_bad_tenant_names_are_refused_and_nothing_is_stored(make_access: Factory, name: str) -> None:
    ac = await make_access()
    with pytest.raises(BadRequest):
        await ac.admin.create_tenant(name)
    assert [t.name for t in await ac.admin.list_tenants()] == ["default"]


async def test_bad_key_settings_are_refused(make_access: Factory) -> None:
    ac = await make_access()
    for kwargs in (
        {"models": ["gpt-*"]},
        {"rate_requests": "60/minuets"},
        {"budget_usd": "-1"},
        {"budget_usd": "lots"},
        {"expires_at": time.time() - 5},
        {"name": "bell\x07"},
    ):
        with pytest.raises(BadRequest):
            await ac.admin.create_key("default", **kwargs)
    with pytest.raises(NotFound):
        await ac.admin.create_key("ghost")
    assert await ac.admin.list_keys() == []


# -- budgets and spend --------------------------------------------------------------------------------


def _priced(**extra: Any) -> dict[str, Any]:
    # $10 per million output tokens: max_tokens=100 -> $0.001 = 1_000_000 nano; no input price
    return {"prices": {"models": {"gpt": {"output_per_million": 10}}}, **extra}


async def test_100_concurrent_requests_against_a_budget_that_fits_10(make_access: Factory) -> None:
    ac = await make_access(**_priced())
    created = await ac.admin.create_key("default", budget_usd="0.01", period="day")  # 10 x $0.001
    p = await ac.auth.authenticate(created.key, None)

    async def request() -> bool:
        try:
            r = await ac.budgets.reserve(p, "gpt", prompt_tokens=50, max_tokens=100)
        except BudgetExceeded as e:
            assert e.status_code == 429 and e.code == "insufficient_quota"
            return False
        await asyncio.sleep(0.01)  # the upstream call
        ac.budgets.settle(r, deployment="d1", prompt_tokens=50, completion_tokens=100)
        return True

    results = await asyncio.gather(*(request() for _ in range(100)))
    assert sum(results) == 10
    await ac.recorder.flush()
    window = window_of("day", time.time())
    assert await ac.store.usage(f"key:{p.key_id}", window) == Usage(spent_nano=10_000_000, reserved_nano=0)
    with pytest.raises(BudgetExceeded, match=r"day budget of \$0\.01"):
        await ac.budgets.reserve(p, "gpt", prompt_tokens=1, max_tokens=1)
    (row,) = await ac.admin.spend(0, time.time() + 1, ["key"])
    assert (row.requests, row.cost_nano, row.completion_tokens) == (10, 10_000_000, 1000)


async def test_a_budget_holds_exactly_across_two_replicas(make_access: Factory) -> None:
    """Shared (PostgreSQL + Redis): exact across replicas. Embedded (SQLite): budgets are counted in
    the memory of the one server that uses them; a second one on the same records file is refused."""
    a = await make_access(**_priced())
    b = await make_access(**_priced())
    await a.admin.create_tenant("acme", budget_usd="0.01", period="month")
    created = await a.admin.create_key("acme")
    pa = await a.auth.authenticate(created.key, None)
    pb = await b.auth.authenticate(created.key, None)
    if a.store.kind == "sqlite":
        assert a.budgets.ledger.kind == "memory"
        await a.budgets.reserve(pa, "gpt", prompt_tokens=0, max_tokens=100)
        with pytest.raises(StoreError, match="another ragline server uses budgets on this records file"):
            await b.budgets.reserve(pb, "gpt", prompt_tokens=0, max_tokens=100)
        return
    assert a.budgets.ledger.kind == "redis"

    async def request(ac: AccessControl, p: Principal) -> bool:
        try:
            r = await ac.budgets.reserve(p, "gpt", prompt_tokens=0, max_tokens=100)
        except BudgetExceeded:
            return False
        ac.budgets.settle(r, deployment="d", prompt_tokens=0, completion_tokens=100)
        return True

    results = await asyncio.gather(*(request(a, pa) if i % 2 else request(b, pb) for i in range(100)))
    assert sum(results) == 10
    await a.recorder.flush()
    await b.recorder.flush()
    assert await a.store.usage("tenant:acme", window_of("month", time.time())) == Usage(10_000_000, 0)


async def test_spent_budget_is_counted_after_a_restart_and_after_lost_counters(make_access: Factory) -> None:
    """The ledger (memory, or Redis) reads what a window has spent from the store: a new process, or
    Redis counters that expired or were flushed, still see the spend that was settled."""
    a = await make_access(**_priced())
    created = await a.admin.create_key("default", budget_usd="0.003", period="total")  # 3 maximums
    p = await a.auth.authenticate(created.key, None)
    for _ in range(2):
        r = await a.budgets.reserve(p, "gpt", 0, 100)
        a.budgets.settle(r, deployment="d", prompt_tokens=0, completion_tokens=100)
    await a.close()  # drains the spend writer into the store
    if a.state.kind == "redis":
        redis = a.state.client  # type: ignore[attr-defined]
        prefix = a.settings.state.key_prefix
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:budget:*")]
        assert keys
        await redis.delete(*keys)  # as if they expired, or Redis restarted empty
    b = await make_access(**_priced())
    pb = await b.auth.authenticate(created.key, None)
    await b.budgets.reserve(pb, "gpt", 0, 100)  # the third maximum fits
    with pytest.raises(BudgetExceeded, match=r"\(\$0 left"):
        await b.budgets.reserve(pb, "gpt", 0, 100)


async def test_settling_below_the_maximum_returns_the_difference(make_access: Factory) -> None:
    ac = await make_access(**_priced())
    created = await ac.admin.create_key("default", budget_usd="0.002", period="total")  # two maximums
    p = await ac.auth.authenticate(created.key, None)
    r1 = await ac.budgets.reserve(p, "gpt", 0, 100)
    r2 = await ac.budgets.reserve(p, "gpt", 0, 100)
    with pytest.raises(BudgetExceeded):
        await ac.budgets.reserve(p, "gpt", 0, 100)  # both maximums in flight: refused
    assert ac.budgets.settle(r1, deployment="d", prompt_tokens=0, completion_tokens=10) == 100_000
    ac.budgets.release(r2)  # the call failed: nothing spent
    await ac.recorder.flush()
    r3 = await ac.budgets.reserve(p, "gpt", 0, 100)  # $0.0001 spent: $0.0019 left, room for one maximum
    with pytest.raises(BudgetExceeded):
        await ac.budgets.reserve(p, "gpt", 0, 100)
    assert ac.budgets.settle(r3, deployment="d", prompt_tokens=0, completion_tokens=100, cached=True) == 0
    await ac.recorder.flush()
    assert await ac.store.usage(f"key:{p.key_id}", "total") == Usage(100_000, 0)
    rows = await ac.admin.spend(0, time.time() + 1, ["model"])
    assert [(r.group["model"], r.requests, r.cached, r.cost_nano) for r in rows] == [("gpt", 2, 1, 100_000)]


async def test_requests_that_cost_nothing_never_touch_the_store(make_access: Factory) -> None:
    ac = await make_access()
    created = await ac.admin.create_key("default", budget_usd="0", period="day")  # a budget of $0
    p = await ac.auth.authenticate(created.key, None)
    r = await ac.budgets.reserve(p, "local", 1000, 1000)  # local: free, so it fits any budget
    assert r.items == () and r.max_cost_nano == 0


async def test_unsettled_reservations_are_released_after_their_ttl(make_access: Factory) -> None:
    ac = await make_access(**_priced(spend={"reservation_ttl_s": 0.2, "sweep_interval_s": 0.1}))
    created = await ac.admin.create_key("default", budget_usd="0.001", period="total")  # one maximum
    p = await ac.auth.authenticate(created.key, None)
    await ac.budgets.reserve(p, "gpt", 0, 100)  # this "process" dies: never settled
    with pytest.raises(BudgetExceeded):
        await ac.budgets.reserve(p, "gpt", 0, 100)
    await asyncio.sleep(0.6)
    await ac.budgets.reserve(p, "gpt", 0, 100)  # released by the sweeper


async def test_spend_written_in_batches_is_all_there_after_close(make_access: Factory) -> None:
    """Counting: every settlement queued before close is in the store after it, in far fewer writes."""
    ac = await make_access(**_priced(spend={"batch_size": 200}))
    await ac.admin.create_tenant("acme", budget_usd=Decimal(1000), period="month")
    keys = [await ac.admin.create_key("acme") for _ in range(3)]
    ps = [await ac.auth.authenticate(k.key, None) for k in keys]
    n = 3000
    reservations = await asyncio.gather(*(ac.budgets.reserve(ps[i % 3], "gpt", 10, 100) for i in range(n)))
    for i, r in enumerate(reservations):
        ac.budgets.settle(r, deployment="d", prompt_tokens=10, completion_tokens=i % 7, request_id=str(i))
    recorder, store = ac.recorder, ac.store
    await ac.close()  # drains
    assert (
        recorder.pending == 0
        and recorder.stats.records_written == n
        and recorder.stats.settlements_written == n
    )
    assert recorder.stats.batches < n / 10 and recorder.stats.records_dropped == 0
    await store.open()
    try:
        rows = await store.spend_summary(0, time.time() + 1, ["key"])
        assert sum(r.requests for r in rows) == n and len(rows) == 3
        expected = sum(i % 7 for i in range(n)) * 10_000  # $10/M output tokens = 10_000 nano per token
        assert sum(r.cost_nano for r in rows) == expected
        assert await store.usage("tenant:acme", window_of("month", time.time())) == Usage(expected, 0)
    finally:
        await store.close()
