"""The plain records the store keeps: tenants, API keys, budget usage and spend.

Money is held as integer nano-dollars (1 USD = 10^9), so that sums and budget checks are exact
in both SQLite and PostgreSQL; times are Unix seconds (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Literal

Role = Literal["admin", "app"]
"""``admin`` keys manage tenants and keys and read spend; ``app`` keys call the API."""

Period = Literal["day", "month", "total"]
"""A budget's period: a UTC calendar day, a UTC calendar month, or for ever."""

SpendGroup = Literal["tenant", "key", "model", "deployment"]
"""What spend can be grouped by."""

NANO_PER_USD = 1_000_000_000


def usd_to_nano(usd: Decimal | str | int | float) -> int:
    """Dollars as integer nano-dollars, rounded up (a budget or cost is never under-counted)."""
    return int((Decimal(str(usd)) * NANO_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def nano_to_usd(nano: int) -> Decimal:
    return Decimal(nano) / NANO_PER_USD


@dataclass(frozen=True, slots=True)
class Budget:
    """At most ``limit_nano`` nano-dollars of spend per ``period``."""

    limit_nano: int
    period: Period


@dataclass(frozen=True, slots=True)
class Tenant:
    """An owner of collections and keys."""

    name: str
    created_at: float
    budget: Budget | None = None
    rate_requests: str | None = None
    """A rate limit for the tenant's requests in ``limits`` notation (e.g. ``600/minute``); None = the
    configured default."""
    rate_tokens: str | None = None
    """The same for tokens (e.g. ``100000/minute``)."""
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as stored: its public id and the hash of the whole key, never the key itself."""

    key_id: str
    secret_hash: str
    """Hex SHA-256 of the whole key."""
    tenant: str
    role: Role
    created_at: float
    name: str = ""
    """A label for people (e.g. the application that holds the key)."""
    expires_at: float | None = None
    revoked_at: float | None = None
    models: tuple[str, ...] | None = None
    """Model names and ``rag/<glob>`` patterns the key may use; None = every model."""
    budget: Budget | None = None
    rate_requests: str | None = None
    rate_tokens: str | None = None


@dataclass(frozen=True, slots=True, order=True)
class BudgetItem:
    """One budget a reservation draws on: ``amount_nano`` of ``scope``'s budget in window ``window``."""

    scope: str
    """``key:<key_id>`` or ``tenant:<name>``."""
    window: str
    """The period's window, e.g. ``day:2026-05-20``, ``month:2026-05`` or ``total``."""
    limit_nano: int
    amount_nano: int


@dataclass(frozen=True, slots=True)
class Usage:
    spent_nano: int = 0
    reserved_nano: int = 0


@dataclass(frozen=True, slots=True)
class Settlement:
    """The end of a reservation: its amounts are released and ``cost_nano`` is added to each window."""

    reservation_id: str
    windows: tuple[tuple[str, str], ...]
    """(scope, window) pairs that the real cost is spent on."""
    cost_nano: int


@dataclass(frozen=True, slots=True)
class SpendRecord:
    """What one request cost."""

    ts: float
    tenant: str
    key_id: str
    model: str
    deployment: str
    prompt_tokens: int
    completion_tokens: int
    cost_nano: int
    cached: bool = False
    request_id: str = ""

    def row(self) -> tuple[float, str, str, str, str, int, int, int, int, str]:
        """The values of a ``spend`` table row, in its column order (both stores write these)."""
        return (
            self.ts,
            self.tenant,
            self.key_id,
            self.model,
            self.deployment,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost_nano,
            int(self.cached),
            self.request_id,
        )


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Spend summed over a period for one group (``group`` maps each grouping to its value)."""

    group: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nano: int = 0
    cached: int = 0
    """Requests answered from a cache."""
