"""SQL shared by the SQLite and PostgreSQL stores (``?`` placeholders; PostgreSQL's become ``%s``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, get_args

from ragline.store.records import Budget, BudgetItem, KeyRecord, Period, Role, SpendGroup, SpendRow, Tenant

TENANT_COLUMNS = "name, created_at, disabled, budget_nano, budget_period, rate_requests, rate_tokens"
KEY_COLUMNS = (
    "key_id, secret_hash, tenant, role, name, created_at, expires_at, revoked_at, models, "
    "budget_nano, budget_period, rate_requests, rate_tokens"
)

INSERT_TENANT = f"INSERT INTO tenants ({TENANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
UPDATE_TENANT = (
    "UPDATE tenants SET disabled = ?, budget_nano = ?, budget_period = ?, rate_requests = ?, "
    "rate_tokens = ? WHERE name = ?"
)
SELECT_TENANT = f"SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?"
SELECT_TENANTS = f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"

INSERT_KEY = f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
UPDATE_KEY = (
    "UPDATE api_keys SET role = ?, name = ?, expires_at = ?, models = ?, budget_nano = ?, "
    "budget_period = ?, rate_requests = ?, rate_tokens = ? WHERE key_id = ?"
)
SELECT_KEY = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?"
SELECT_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY tenant, created_at, key_id"
SELECT_TENANT_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created_at, key_id"
REVOKE_KEY = "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL"

BUMP_REVISION = "UPDATE access_revision SET revision = revision + 1 WHERE id = 1"
SELECT_REVISION = "SELECT revision FROM access_revision WHERE id = 1"

# One atomic statement per budget: create the window's row with the amount, or add the amount to
# the existing row's reservations, in both cases only if it fits under the limit; RETURNING tells
# whether it did. Under concurrency the WHERE is evaluated on the latest row (the row is locked).
RESERVE = (
    "INSERT INTO budget_usage (scope, win, spent_nano, reserved_nano) SELECT ?, ?, 0, ? WHERE ? <= ? "
    "ON CONFLICT (scope, win) DO UPDATE "
    "SET reserved_nano = budget_usage.reserved_nano + excluded.reserved_nano "
    "WHERE budget_usage.spent_nano + budget_usage.reserved_nano + excluded.reserved_nano <= ? "
    "RETURNING reserved_nano"
)
INSERT_RESERVATION = (
    "INSERT INTO budget_reservations (id, scope, win, amount_nano, expires_at) VALUES (?, ?, ?, ?, ?)"
)
SELECT_USAGE = "SELECT spent_nano, reserved_nano FROM budget_usage WHERE scope = ? AND win = ?"
# {greatest}: GREATEST in PostgreSQL, MAX (the scalar function) in SQLite
# an upsert: a window's row exists when the store held its reservations, not when a ledger in
# memory or in Redis did (then only the spend arrives here)
SETTLE_USAGE = (
    "INSERT INTO budget_usage (scope, win, spent_nano, reserved_nano) VALUES (?, ?, ?, 0) "
    "ON CONFLICT (scope, win) DO UPDATE "
    "SET reserved_nano = {greatest}(budget_usage.reserved_nano - ?, 0), "
    "spent_nano = budget_usage.spent_nano + excluded.spent_nano"
)
INSERT_SPEND = (
    "INSERT INTO spend (ts, tenant, key_id, model, deployment, prompt_tokens, completion_tokens, "
    "cost_nano, cached, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
DELETE_EXPIRED = "DELETE FROM budget_reservations WHERE expires_at < ? RETURNING scope, win, amount_nano"

_GROUP_COLUMNS: dict[str, str] = {
    "tenant": "tenant",
    "key": "key_id",
    "model": "model",
    "deployment": "deployment",
}


def spend_summary_sql(
    group_by: Sequence[SpendGroup], tenant: str | None, key_id: str | None
) -> tuple[str, list[str]]:
    """The summary query and the names of its group columns (validated: never user text in SQL)."""
    names: list[str] = list(dict.fromkeys(group_by))
    for g in names:
        if g not in _GROUP_COLUMNS:
            raise ValueError(f"cannot group spend by {g!r}; choose from {', '.join(get_args(SpendGroup))}")
    cols = [_GROUP_COLUMNS[g] for g in names]
    where = "ts >= ? AND ts < ?"
    if tenant is not None:
        where += " AND tenant = ?"
    if key_id is not None:
        where += " AND key_id = ?"
    select = ", ".join([*cols, ""]) if cols else ""
    sql = (
        f"SELECT {select}COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
        f"COALESCE(SUM(cost_nano), 0), COALESCE(SUM(cached), 0) FROM spend WHERE {where}"
    )
    if cols:
        group = ", ".join(cols)
        sql += f" GROUP BY {group} ORDER BY SUM(cost_nano) DESC, {group}"
    return sql, names


def summary_params(start: float, end: float, tenant: str | None, key_id: str | None) -> list[Any]:
    params: list[Any] = [start, end]
    if tenant is not None:
        params.append(tenant)
    if key_id is not None:
        params.append(key_id)
    return params


def reserve_params(it: BudgetItem) -> tuple[Any, ...]:
    """The parameters of RESERVE for one budget."""
    return (it.scope, it.window, it.amount_nano, it.amount_nano, it.limit_nano, it.limit_nano)


def spend_row(row: Sequence[Any], names: Sequence[str]) -> SpendRow:
    n = len(names)
    return SpendRow(
        group={g: str(row[i]) for i, g in enumerate(names)},
        requests=int(row[n]),
        prompt_tokens=int(row[n + 1]),
        completion_tokens=int(row[n + 2]),
        cost_nano=int(row[n + 3]),
        cached=int(row[n + 4]),
    )


def _budget(limit: Any, period: Any) -> Budget | None:
    if limit is None:
        return None
    if period not in get_args(Period):
        raise ValueError(f"stored budget period {period!r} is not one of {get_args(Period)}")
    return Budget(int(limit), period)


def tenant_params(t: Tenant) -> tuple[Any, ...]:
    b = t.budget
    return (
        t.name,
        t.created_at,
        int(t.disabled),
        b.limit_nano if b else None,
        b.period if b else None,
        t.rate_requests,
        t.rate_tokens,
    )


def tenant_update_params(t: Tenant) -> tuple[Any, ...]:
    return (*tenant_params(t)[2:], t.name)


def tenant_from_row(row: Sequence[Any]) -> Tenant:
    return Tenant(
        name=row[0],
        created_at=float(row[1]),
        disabled=bool(row[2]),
        budget=_budget(row[3], row[4]),
        rate_requests=row[5],
        rate_tokens=row[6],
    )


def key_params(k: KeyRecord) -> tuple[Any, ...]:
    b = k.budget
    return (
        k.key_id,
        k.secret_hash,
        k.tenant,
        k.role,
        k.name,
        k.created_at,
        k.expires_at,
        k.revoked_at,
        json.dumps(list(k.models)) if k.models is not None else None,
        b.limit_nano if b else None,
        b.period if b else None,
        k.rate_requests,
        k.rate_tokens,
    )


def key_update_params(k: KeyRecord) -> tuple[Any, ...]:
    p = key_params(k)
    return (p[3], p[4], p[6], p[8], p[9], p[10], p[11], p[12], k.key_id)


def key_from_row(row: Sequence[Any]) -> KeyRecord:
    role: Role = "admin" if row[3] == "admin" else "app"
    models = json.loads(row[8]) if row[8] is not None else None
    return KeyRecord(
        key_id=row[0],
        secret_hash=row[1],
        tenant=row[2],
        role=role,
        name=row[4],
        created_at=float(row[5]),
        expires_at=float(row[6]) if row[6] is not None else None,
        revoked_at=float(row[7]) if row[7] is not None else None,
        models=tuple(models) if models is not None else None,
        budget=_budget(row[9], row[10]),
        rate_requests=row[11],
        rate_tokens=row[12],
    )


def settle_totals(
    released: Sequence[tuple[str, str, int]], costs: Sequence[tuple[str, str, int]]
) -> list[tuple[str, str, int, int]]:
    """(scope, window, spend, release) per window, sorted (every writer locks rows in one order)."""
    totals: dict[tuple[str, str], list[int]] = {}
    for scope, win, amount in released:
        totals.setdefault((scope, win), [0, 0])[0] += int(amount)
    for scope, win, cost in costs:
        totals.setdefault((scope, win), [0, 0])[1] += int(cost)
    return [(scope, win, s, r) for (scope, win), (r, s) in sorted(totals.items())]
