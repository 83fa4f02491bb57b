"""The record store: tenants, API keys, budgets and spend (SQLite embedded, PostgreSQL shared)."""

from ragline.store.base import AlreadyExists, NotFound, RecordStore, StoreError
from ragline.store.factory import build_store
from ragline.store.records import (
    Budget,
    BudgetItem,
    KeyRecord,
    Period,
    Role,
    Settlement,
    SpendGroup,
    SpendRecord,
    SpendRow,
    Tenant,
    Usage,
    nano_to_usd,
    usd_to_nano,
)

__all__ = [
    "AlreadyExists",
    "Budget",
    "BudgetItem",
    "KeyRecord",
    "NotFound",
    "Period",
    "RecordStore",
    "Role",
    "Settlement",
    "SpendGroup",
    "SpendRecord",
    "SpendRow",
    "StoreError",
    "Tenant",
    "Usage",
    "build_store",
    "nano_to_usd",
    "usd_to_nano",
]
