"""Managing tenants and keys, and reading spend: what ``ragline keys|tenants|spend`` and the admin
API do. Every change bumps the store's revision (cached lookups everywhere drop it within
``auth.revision_poll_s``) and, with Redis, is also announced on the ``access`` channel at once.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from enum import Enum

from ragline.access.authn import CHANNEL
from ragline.access.errors import BadRequest
from ragline.access.keys import generate_key, hash_key
from ragline.access.models import check_patterns
from ragline.access.ratelimit import parse_rate
from ragline.errors import RaglineError
from ragline.state.base import SharedState
from ragline.store.base import AlreadyExists, NotFound, RecordStore
from ragline.store.records import (
    Budget,
    KeyRecord,
    Period,
    Role,
    SpendGroup,
    SpendRow,
    Tenant,
    usd_to_nano,
)

log = logging.getLogger(__name__)

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class _Unset(Enum):
    UNSET = 0


UNSET = _Unset.UNSET
"""Leave a setting as it is (``update_tenant``); None clears it."""


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: str
    """The key itself: shown once, never stored."""
    record: KeyRecord


def check_tenant_name(name: str) -> str:
    if not TENANT_NAME.match(name) or ".." in name:
        raise BadRequest(
            f"tenant name {name[:80]!r}: use 1-63 lowercase letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def _label(text: str) -> str:
    if len(text) > 200 or any(unicodedata.category(c).startswith("C") for c in text):
        raise BadRequest("a key's name is at most 200 printable characters")
    return text


def _rate(text: str | None, what: str) -> str | None:
    if text is None or text == "":
        return None
    try:
        parse_rate(text)
    except ValueError:
        raise BadRequest(
            f"{what} {text[:80]!r} is not a rate limit; write e.g. 60/minute or 1000/hour"
        ) from None
    return text


def _budget(usd: Decimal | str | float | None, period: Period) -> Budget | None:
    if usd is None:
        return None
    try:
        value = Decimal(str(usd))
    except InvalidOperation:
        raise BadRequest(f"budget {usd!r} is not an amount in USD") from None
    if not value.is_finite() or value < 0 or value > 1_000_000_000:
        raise BadRequest(f"budget {usd!r}: give an amount in USD between 0 and 1e9")
    if period not in ("day", "month", "total"):
        raise BadRequest(f"budget period {period!r}: use day, month or total")
    return Budget(usd_to_nano(value), period)


class AccessAdmin:
    def __init__(
        self, store: RecordStore, state: SharedState | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._state = state
        self._clock = clock

    async def _announce(self, message: str) -> None:
        if self._state is None:
            return
        try:
            await self._state.publish(CHANNEL, message)
        except RaglineError as e:  # the revision poll still spreads the change
            log.warning("could not announce an access change (%s): %s", message, e)
        except OSError as e:
            log.warning("could not announce an access change (%s): %s", message, e)

    # -- tenants -------------------------------------------------------------------------------------

    async def create_tenant(
        self,
        name: str,
        *,
        budget_usd: Decimal | str | float | None = None,
        period: Period = "month",
        rate_requests: str | None = None,
        rate_tokens: str | None = None,
    ) -> Tenant:
        t = Tenant(
            name=check_tenant_name(name),
            created_at=self._clock(),
            budget=_budget(budget_usd, period),
            rate_requests=_rate(rate_requests, "requests rate"),
            rate_tokens=_rate(rate_tokens, "tokens rate"),
        )
        await self._store.create_tenant(t)
        return t

    async def ensure_tenant(self, name: str) -> Tenant:
        """The tenant, created (with no budget or limits of its own) if it does not exist."""
        found = await self._store.get_tenant(name)
        if found is not None:
            return found
        try:
            return await self.create_tenant(name)
        except AlreadyExists:  # another replica made it meanwhile
            t = await self._store.get_tenant(name)
            assert t is not None
            return t

    async def update_tenant(
        self,
        name: str,
        *,
        budget_usd: Decimal | str | float | _Unset | None = UNSET,
        period: Period = "month",
        rate_requests: str | _Unset | None = UNSET,
        rate_tokens: str | _Unset | None = UNSET,
        disabled: bool | None = None,
    ) -> Tenant:
        """Change what is given; ``None`` clears a budget or rate."""
        t = await self._store.get_tenant(name)
        if t is None:
            raise NotFound(f"no tenant {name!r}")
        if not isinstance(budget_usd, _Unset):
            t = replace(t, budget=_budget(budget_usd, period))
        if not isinstance(rate_requests, _Unset):
            t = replace(t, rate_requests=_rate(rate_requests, "requests rate"))
        if not isinstance(rate_tokens, _Unset):
            t = replace(t, rate_tokens=_rate(rate_tokens, "tokens rate"))
        if disabled is not None:
            t = replace(t, disabled=disabled)
        await self._store.update_tenant(t)
        await self._announce(f"tenant:{name}")
        return t

    async def list_tenants(self) -> list[Tenant]:
        return await self._store.list_tenants()

    # -- keys ----------------------------------------------------------------------------------------

    async def create_key(
        self,
        tenant: str,
        *,
        role: Role = "app",
        name: str = "",
        expires_at: float | None = None,
        models: Iterable[str] | None = None,
        budget_usd: Decimal | str | float | None = None,
        period: Period = "month",
        rate_requests: str | None = None,
        rate_tokens: str | None = None,
    ) -> CreatedKey:
        """A new key for ``tenant``; the returned ``key`` is the only time it is ever seen."""
        check_tenant_name(tenant)
        if role not in ("admin", "app"):
            raise BadRequest(f"role {role!r}: use admin or app")
        try:
            allowed = check_patterns(models) if models is not None else None
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if expires_at is not None and expires_at <= self._clock():
            raise BadRequest("the expiry is in the past")
        key, key_id = generate_key()
        record = KeyRecord(
            key_id=key_id,
            secret_hash=hash_key(key),
            tenant=tenant,
            role=role,
            created_at=self._clock(),
            name=_label(name),
            expires_at=expires_at,
            models=allowed,
            budget=_budget(budget_usd, period),
            rate_requests=_rate(rate_requests, "requests rate"),
            rate_tokens=_rate(rate_tokens, "tokens rate"),
        )
        await self._store.create_key(record)
        return CreatedKey(key, record)

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        return await self._store.list_keys(tenant)

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key (by its id); False when there is no such key or it was revoked already."""
        done = await self._store.revoke_key(key_id, self._clock())
        if done:
            await self._announce(f"key:{key_id}")
        return done

    # -- spend ---------------------------------------------------------------------------------------

    async def spend(
        self,
        start: float,
        end: float,
        group_by: Sequence[SpendGroup] = (),
        tenant: str | None = None,
        key_id: str | None = None,
    ) -> list[SpendRow]:
        try:
            return await self._store.spend_summary(start, end, group_by, tenant, key_id)
        except ValueError as e:
            raise BadRequest(str(e)) from None
