"""The admin API: tenants, keys and spend (``/admin/*``, admin keys only; see ``access_mw.py``).

The same operations as ``ragline tenants|keys|spend`` (``access/cli.py``), through ``AccessAdmin``;
a new key is in the creation response and nowhere else, ever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ragline.access import AccessControl
from ragline.access.admin import UNSET
from ragline.access.keys import id_from
from ragline.access.views import key_row, spend_row, tenant_row, when
from ragline.cache.service import ResponseCache
from ragline.server.errors import BadRequest, NotFound
from ragline.store.records import SpendGroup

Period = Literal["day", "month", "total"]
_GROUPS = ("tenant", "key", "model", "deployment")


class CreateTenant(BaseModel):
    name: str = Field(min_length=1, max_length=63)
    budget_usd: Decimal | None = Field(None, ge=0)
    period: Period = "month"
    rate_requests: str | None = Field(None, max_length=100)
    rate_tokens: str | None = Field(None, max_length=100)


class UpdateTenant(BaseModel):
    """Only the fields sent change; ``null`` clears a budget or rate."""

    budget_usd: Decimal | None = Field(None, ge=0)
    period: Period = "month"
    rate_requests: str | None = Field(None, max_length=100)
    rate_tokens: str | None = Field(None, max_length=100)
    disabled: bool | None = None


class CreateKey(BaseModel):
    tenant: str = Field(min_length=1, max_length=63)
    role: Literal["app", "admin"] = "app"
    name: str = Field("", max_length=200)
    expires_in_s: float | None = Field(None, gt=0, description="the key expires this many seconds from now")
    models: list[str] | None = Field(None, max_length=1000)
    budget_usd: Decimal | None = Field(None, ge=0)
    period: Period = "month"
    rate_requests: str | None = Field(None, max_length=100)
    rate_tokens: str | None = Field(None, max_length=100)


class PurgeCache(BaseModel):
    """Which cached responses to drop: those matching every field given (all of them: none given)."""

    tenant: str | None = Field(None, min_length=1, max_length=63)
    collection: str | None = Field(None, min_length=1, max_length=200, description="the tenant's name for it")
    model: str | None = Field(None, min_length=1, max_length=200)


def _period_start(period: Period, now: datetime) -> float:
    if period == "total":
        return 0.0
    first = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return (first if period == "day" else first.replace(day=1)).timestamp()


def build_admin_router(
    access: AccessControl,
    cache: ResponseCache | None = None,
    stored_name: Callable[[str | None, str], str] | None = None,
) -> APIRouter:
    """``stored_name(tenant, collection)``: the stored name of a tenant's collection (None: the default
    tenant), for purging the cache by collection."""
    r = APIRouter(prefix="/admin", tags=["admin"])
    admin = access.admin

    @r.post("/cache/purge")
    async def purge_cache(body: PurgeCache) -> dict[str, Any]:
        if cache is None:
            return {"object": "cache.purge", "purged": 0, "enabled": False}
        collection = None
        if body.collection is not None:
            collection = stored_name(body.tenant, body.collection) if stored_name else body.collection
        n = await cache.purge(tenant=body.tenant, collection=collection, model=body.model)
        return {"object": "cache.purge", "purged": n, "enabled": True}

    @r.get("/tenants")
    async def list_tenants() -> dict[str, Any]:
        return {"object": "list", "data": [tenant_row(t) for t in await admin.list_tenants()]}

    @r.post("/tenants", status_code=201)
    async def create_tenant(body: CreateTenant) -> dict[str, Any]:
        t = await admin.create_tenant(
            body.name,
            budget_usd=body.budget_usd,
            period=body.period,
            rate_requests=body.rate_requests,
            rate_tokens=body.rate_tokens,
        )
        return tenant_row(t)

    @r.patch("/tenants/{name}")
    async def update_tenant(name: str, body: UpdateTenant) -> dict[str, Any]:
        sent = body.model_fields_set
        t = await admin.update_tenant(
            name,
            budget_usd=body.budget_usd if "budget_usd" in sent else UNSET,
            period=body.period,
            rate_requests=body.rate_requests if "rate_requests" in sent else UNSET,
            rate_tokens=body.rate_tokens if "rate_tokens" in sent else UNSET,
            disabled=body.disabled,
        )
        return tenant_row(t)

    @r.get("/keys")
    async def list_keys(tenant: str | None = Query(None, max_length=63)) -> dict[str, Any]:
        return {"object": "list", "data": [key_row(k) for k in await admin.list_keys(tenant)]}

    @r.post("/keys", status_code=201)
    async def create_key(body: CreateKey) -> dict[str, Any]:
        created = await admin.create_key(
            body.tenant,
            role=body.role,
            name=body.name,
            expires_at=time.time() + body.expires_in_s if body.expires_in_s else None,
            models=body.models,
            budget_usd=body.budget_usd,
            period=body.period,
            rate_requests=body.rate_requests,
            rate_tokens=body.rate_tokens,
        )
        return {**key_row(created.record), "api_key": created.key}

    @r.delete("/keys/{key_id}")
    async def revoke_key(key_id: str) -> dict[str, Any]:
        kid = id_from(key_id)
        if not await admin.revoke_key(kid):
            raise NotFound(f"no active key {kid!r}", param="key_id")
        return {"key_id": kid, "object": "key", "revoked": True}

    @r.get("/spend")
    async def spend(
        group_by: str = Query("tenant", max_length=100, description="tenant, key, model, deployment"),
        period: Period = "month",
        start: float | None = Query(None, ge=0, description="Unix time; overrides period"),
        end: float | None = Query(None, ge=0, description="Unix time; default now"),
        tenant: str | None = Query(None, max_length=63),
        key_id: str | None = Query(None, max_length=200),
    ) -> dict[str, Any]:
        groups = [g.strip() for g in group_by.split(",") if g.strip()]
        for g in groups:
            if g not in _GROUPS:
                raise BadRequest(f"group_by {g!r}: use tenant, key, model or deployment", param="group_by")
        now = datetime.now(UTC)
        t0 = start if start is not None else _period_start(period, now)
        t1 = end if end is not None else now.timestamp() + 1
        grouping: list[SpendGroup] = groups  # type: ignore[assignment]  # checked above
        rows = await admin.spend(t0, t1, grouping, tenant=tenant, key_id=id_from(key_id) if key_id else None)
        return {"object": "list", "start": when(t0), "end": when(t1), "data": [spend_row(x) for x in rows]}

    return r
