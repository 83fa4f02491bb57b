"""Who is calling: what an authenticated key may do, as the request pipeline sees it."""

from __future__ import annotations

from dataclasses import dataclass

from ragline.access.models import model_allowed
from ragline.store.records import Budget, KeyRecord, Role, Tenant


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant: str
    role: Role
    models: tuple[str, ...] | None = None
    """The key's allow-list (None = every model)."""
    key_budget: Budget | None = None
    tenant_budget: Budget | None = None
    key_rate_requests: str | None = None
    key_rate_tokens: str | None = None
    tenant_rate_requests: str | None = None
    tenant_rate_tokens: str | None = None
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, model: str) -> bool:
        return model_allowed(self.models, model)

    @classmethod
    def of(cls, key: KeyRecord, tenant: Tenant | None) -> Principal:
        return cls(
            key_id=key.key_id,
            tenant=key.tenant,
            role=key.role,
            models=key.models,
            key_budget=key.budget,
            tenant_budget=tenant.budget if tenant else None,
            key_rate_requests=key.rate_requests,
            key_rate_tokens=key.rate_tokens,
            tenant_rate_requests=tenant.rate_requests if tenant else None,
            tenant_rate_tokens=tenant.rate_tokens if tenant else None,
            expires_at=key.expires_at,
        )
