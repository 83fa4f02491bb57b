"""The record-store seam: tenants, API keys, budgets and spend, behind one Protocol.

Two implementations: ``SQLiteStore`` (the embedded default, a file under ``data_dir``) and
``PostgresStore`` (shared by every replica). ``tests/test_store_contract.py`` runs one suite against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ragline.errors import RaglineError
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


class StoreError(RaglineError):
    """The record store failed (unreachable, or its schema is newer than this ragline)."""


class AlreadyExists(StoreError):
    """A tenant or key with that name or id exists already."""


class NotFound(StoreError):
    """No tenant or key with that name or id."""


@runtime_checkable
class RecordStore(Protocol):
    """Tenants, keys, budgets and spend. Every method is a coroutine and safe to call concurrently."""

    kind: str
    """``sqlite`` or ``postgresql``."""

    async def open(self) -> None:
        """Connect and bring the schema up to date (versioned migrations, safe to run from many replicas)."""

    async def close(self) -> None: ...

    # -- tenants and keys ------------------------------------------------------------------------------

    async def create_tenant(self, tenant: Tenant) -> None:
        """Add a tenant; AlreadyExists when the name is taken."""

    async def update_tenant(self, tenant: Tenant) -> None:
        """Replace a tenant's record (budget, limits, disabled); NotFound when there is none."""

    async def get_tenant(self, name: str) -> Tenant | None: ...

    async def list_tenants(self) -> list[Tenant]: ...

    async def create_key(self, key: KeyRecord) -> None:
        """Add a key; NotFound when its tenant does not exist, AlreadyExists when its id is taken."""

    async def update_key(self, key: KeyRecord) -> None:
        """Replace a key's record (models, budget, limits, expiry); NotFound when there is none."""

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]: ...

    async def revoke_key(self, key_id: str, at: float) -> bool:
        """Mark a key revoked; False when there is no such key or it was revoked already."""

    async def revision(self) -> int:
        """A number that grows with every change to a tenant or key (cached lookups poll it)."""

    # -- budgets ---------------------------------------------------------------------------------------

    async def reserve(self, reservation_id: str, items: Sequence[BudgetItem], expires_at: float) -> bool:
        """Atomically add each item's amount to its window's reservations if, for every item,
        spent + reserved + amount <= limit; otherwise change nothing and return False.
        The reservation is released by ``commit_spend`` or, if never settled, after ``expires_at``.
        """

    async def usage(self, scope: str, window: str) -> Usage: ...

    async def commit_spend(self, settlements: Sequence[Settlement], records: Sequence[SpendRecord]) -> None:
        """In one transaction: release the settled reservations, add their real costs to their windows,
        and append the spend records."""

    async def release_expired(self, now: float) -> int:
        """Release reservations whose ``expires_at`` has passed (their request never settled); returns
        how many (scope, window) amounts were released."""

    async def spend_summary(
        self,
        start: float,
        end: float,
        group_by: Sequence[SpendGroup] = (),
        tenant: str | None = None,
        key_id: str | None = None,
    ) -> list[SpendRow]:
        """Spend with ``start <= ts < end``, summed per group, the most costly first."""
