"""`ragline keys|tenants|spend`: manage API keys and tenants and read spend, straight on the store.

Registered on the main app in ragline.cli. Changes reach running servers within
``auth.revision_poll_s`` (at once with Redis).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ragline.access.admin import AccessAdmin
from ragline.access.keys import id_from
from ragline.access.views import key_row, spend_row, tenant_row, when
from ragline.config import Settings, load_settings
from ragline.state.factory import build_state
from ragline.store.factory import build_store
from ragline.store.records import Period, SpendGroup, SpendRow

T = TypeVar("T")

keys_app = typer.Typer(no_args_is_help=True, help="API keys: create (shown once), list, revoke.")
tenants_app = typer.Typer(no_args_is_help=True, help="Tenants: the owners of keys and collections.")
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
BudgetOpt = Annotated[str | None, typer.Option("--budget", help="budget in USD per --period, e.g. 25 or 0.5")]
PeriodOpt = Annotated[str, typer.Option("--period", help="budget period: day, month or total")]
RequestsOpt = Annotated[str | None, typer.Option("--requests", help="rate limit of requests, e.g. 60/minute")]
TokensOpt = Annotated[str | None, typer.Option("--tokens", help="rate limit of tokens, e.g. 100000/minute")]


def _run(config: Path | None, action: Callable[[AccessAdmin, Settings], Awaitable[T]]) -> T:
    settings = load_settings(config)

    async def go() -> T:
        store = build_store(settings)
        state = build_state(settings) if settings.state.url else None
        await store.open()
        try:
            if state is not None:
                await state.open()
            try:
                admin = AccessAdmin(store, state)
                await admin.ensure_tenant(settings.auth.default_tenant)  # as the server does at start
                return await action(admin, settings)
            finally:
                if state is not None:
                    await state.close()
        finally:
            await store.close()

    return asyncio.run(go())


def _period(value: str) -> Period:
    if value not in get_args(Period):
        raise typer.BadParameter(f"{value!r}: use day, month or total", param_hint="--period")
    return value  # type: ignore[return-value]


_DURATION = re.compile(r"^(\d+)([mhdw])$")


def _expiry(text: str | None) -> float | None:
    """``30d``, ``12h``, ``90m``, ``2w``, or a UTC date/time (``2026-12-31``, ``2026-12-31T18:00``)."""
    if text is None:
        return None
    m = _DURATION.match(text.strip())
    if m:
        unit = {"m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return time.time() + int(m.group(1)) * unit
    return _instant(text, "--expires")


def _instant(text: str, hint: str) -> float:
    try:
        d = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give a date like 2026-12-31 (UTC)", param_hint=hint) from None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def _table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append(escape(", ".join(v) if isinstance(v, list) else "" if v is None else str(v)))
        t.add_row(*cells)
    console.print(t)


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# -- tenants ----------------------------------------------------------------------------------------


@tenants_app.command("create")
def tenants_create(
    name: str,
    budget: BudgetOpt = None,
    period: PeriodOpt = "month",
    requests: RequestsOpt = None,
    tokens: TokensOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Create a tenant (lowercase letters, digits, '_', '-', '.')."""
    p = _period(period)
    t = _run(
        config,
        lambda a, _: a.create_tenant(
            name, budget_usd=budget, period=p, rate_requests=requests, rate_tokens=tokens
        ),
    )
    if as_json:
        _json(tenant_row(t))
    else:
        console.print(f"created tenant {escape(t.name)}")


@tenants_app.command("list")
def tenants_list(as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """List tenants."""
    rows = [tenant_row(t) for t in _run(config, lambda a, _: a.list_tenants())]
    if as_json:
        _json(rows)
    else:
        _table(rows, ["name", "budget", "rate_requests", "rate_tokens", "disabled", "created_at"], "tenants")


# -- keys -------------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="default: auth.default_tenant")] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="an admin key (manages tenants, keys, spend)")
    ] = False,
    name: Annotated[str, typer.Option("--name", help="a label, e.g. the application's name")] = "",
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="allow only these models (repeat); rag/<glob> for collections"),
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="30d, 12h, 2w, or a UTC date such as 2026-12-31")
    ] = None,
    budget: BudgetOpt = None,
    period: PeriodOpt = "month",
    requests: RequestsOpt = None,
    tokens: TokensOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Create an API key. The key is printed once: it is stored only as a hash."""
    p = _period(period)
    expires_at = _expiry(expires)

    async def create(a: AccessAdmin, s: Settings) -> Any:
        return await a.create_key(
            tenant or s.auth.default_tenant,
            role="admin" if admin else "app",
            name=name,
            expires_at=expires_at,
            models=model or None,
            budget_usd=budget,
            period=p,
            rate_requests=requests,
            rate_tokens=tokens,
        )

    created = _run(config, create)
    if as_json:
        _json({**key_row(created.record), "api_key": created.key})
        return
    console.print(f"created key {created.record.key_id} for tenant {escape(created.record.tenant)}")
    sys.stdout.write(created.key + "\n")
    err.print("[yellow]this is the only time the key is shown: store it now[/yellow]")


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="only this tenant's keys")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List keys (ids, never the keys themselves)."""
    rows = [key_row(k) for k in _run(config, lambda a, _: a.list_keys(tenant))]
    if as_json:
        _json(rows)
    else:
        cols = ["key", "tenant", "role", "name", "status", "models", "budget", "expires_at", "created_at"]
        _table(rows, cols, "keys")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (as listed), or the key")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a key: every server refuses it within auth.revision_poll_s."""
    kid = id_from(key_id)
    if not _run(config, lambda a, _: a.revoke_key(kid)):
        err.print(f"[red]error:[/red] no active key {escape(kid[:40])}")
        raise typer.Exit(code=1)
    console.print(f"revoked {kid}")


# -- spend ------------------------------------------------------------------------------------------


def spend(
    by: Annotated[
        str, typer.Option("--by", help="group by any of tenant, key, model, deployment (comma-separated)")
    ] = "tenant",
    period: Annotated[
        str, typer.Option("--period", help="day (today), month (this month) or total (UTC)")
    ] = "month",
    since: Annotated[
        str | None, typer.Option("--since", help="from this UTC date/time (overrides --period)")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="up to this UTC date/time (default: now)")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="only this tenant")] = None,
    key: Annotated[str | None, typer.Option("--key", help="only this key id")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Spend (requests, tokens, cost in USD) over a period, grouped."""
    groups = [g.strip() for g in by.split(",") if g.strip()]
    for g in groups:
        if g not in get_args(SpendGroup):
            raise typer.BadParameter(f"{g!r}: group by tenant, key, model or deployment", param_hint="--by")
    now = datetime.now(UTC)
    if since is not None:
        start = _instant(since, "--since")
    else:
        p = _period(period)
        first = now.replace(hour=0, minute=0, second=0, microsecond=0)
        start = 0.0 if p == "total" else (first if p == "day" else first.replace(day=1)).timestamp()
    end = _instant(until, "--until") if until is not None else (now + timedelta(seconds=1)).timestamp()
    kid = id_from(key) if key else None
    grouping = cast(list[SpendGroup], groups)
    rows: list[SpendRow] = _run(config, lambda a, _: a.spend(start, end, grouping, tenant=tenant, key_id=kid))
    out = [spend_row(r) for r in rows]
    if as_json:
        _json({"start": when(start), "end": when(end), "rows": out})
    else:
        cols = [*groups, "requests", "prompt_tokens", "completion_tokens", "cost_usd", "cached"]
        _table(out, cols, f"spend {when(start)} .. {when(end)} UTC")
