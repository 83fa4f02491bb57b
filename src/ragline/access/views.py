"""Tenants, keys and spend as plain dicts: what the admin API returns and the CLI prints."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from ragline.access.keys import display
from ragline.store.records import Budget, KeyRecord, SpendRow, Tenant, nano_to_usd


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts is not None else ""


def usd(nano: int) -> str:
    return f"{nano_to_usd(nano):.6f}".rstrip("0").rstrip(".")


def budget_text(b: Budget | None) -> str:
    return f"${usd(b.limit_nano)}/{b.period}" if b else ""


def tenant_row(t: Tenant) -> dict[str, Any]:
    return {
        "name": t.name,
        "created_at": when(t.created_at),
        "budget": budget_text(t.budget) or None,
        "rate_requests": t.rate_requests,
        "rate_tokens": t.rate_tokens,
        "disabled": t.disabled,
    }


def key_row(k: KeyRecord) -> dict[str, Any]:
    now = time.time()
    status = "revoked" if k.revoked_at else "expired" if k.expires_at and k.expires_at <= now else "active"
    return {
        "key_id": k.key_id,
        "key": display(k.key_id),
        "tenant": k.tenant,
        "role": k.role,
        "name": k.name,
        "status": status,
        "created_at": when(k.created_at),
        "expires_at": when(k.expires_at) or None,
        "revoked_at": when(k.revoked_at) or None,
        "models": list(k.models) if k.models is not None else None,
        "budget": budget_text(k.budget) or None,
        "rate_requests": k.rate_requests,
        "rate_tokens": k.rate_tokens,
    }


def spend_row(r: SpendRow) -> dict[str, Any]:
    return {
        **r.group,
        "requests": r.requests,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cost_usd": usd(r.cost_nano),
        "cached": r.cached,
    }
