"""Access control as one object: the store, the shared state and every access part, from the settings.

The request pipeline uses its parts in this order: ``admit`` (authentication, then the requests
limits) -> ``limiter.hit`` on the tokens limits and ``budgets.reserve``, for a model call ->
(the call) -> ``budgets.settle`` and ``limiter.settle_tokens``.

Open or not: the server requires keys as soon as any can authenticate (a bootstrap admin key, or
a key in the store that is not revoked). Until then it runs open, every caller being an anonymous
application key of the default tenant; a key created while it runs turns authentication on
within ``auth.revision_poll_s``, and it never turns off again in a running process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ragline.access.admin import AccessAdmin
from ragline.access.authn import Authenticator
from ragline.access.bootstrap import load_admin_key
from ragline.access.budget import BudgetKeeper
from ragline.access.errors import PermissionDenied
from ragline.access.ledger import build_ledger
from ragline.access.prices import PriceTable
from ragline.access.principal import Principal
from ragline.access.ratelimit import Limiter, RateDecision
from ragline.access.spend import SpendRecorder
from ragline.config import Settings
from ragline.state.base import SharedState
from ragline.state.factory import build_state
from ragline.store.base import RecordStore
from ragline.store.factory import build_store

log = logging.getLogger(__name__)

ANONYMOUS_KEY_ID = "anonymous"


async def keys_in_use(store: RecordStore) -> bool:
    """Whether the store holds a key that is not revoked."""
    return any(k.revoked_at is None for k in await store.list_keys())


async def auth_in_use(settings: Settings) -> bool:
    """Whether a server with these settings would require keys (opens and closes the store)."""
    if load_admin_key(settings.auth) is not None:
        return True
    store = build_store(settings)
    await store.open()
    try:
        return await keys_in_use(store)
    finally:
        await store.close()


class AccessControl:
    def __init__(
        self,
        settings: Settings,
        *,
        store: RecordStore | None = None,
        state: SharedState | None = None,
        admin_key: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or build_store(settings)
        self.state = state or build_state(settings)
        admin_key = admin_key or load_admin_key(settings.auth)
        self.admin_key_configured = admin_key is not None
        self.limiter = Limiter(self.state, settings.limits)
        self.prices = PriceTable(settings.prices)
        self.recorder = SpendRecorder(self.store, settings.spend)
        ledger = build_ledger(self.store, self.state)
        self.budgets = BudgetKeeper(self.store, self.prices, self.recorder, settings.spend, ledger=ledger)
        self.auth = Authenticator(
            self.store,
            self.state,
            settings.auth,
            limiter=self.limiter,
            admin_key=admin_key,
            on_change=self._changed,
        )
        self.admin = AccessAdmin(self.store, self.state)
        self.anonymous = Principal(ANONYMOUS_KEY_ID, settings.auth.default_tenant, "app")
        """Who calls a server that runs open."""
        self.required = True
        """Whether requests need a key (False: the server runs open, see the module's docstring)."""
        self._recheck: asyncio.Task[None] | None = None
        self._started = False

    async def start(self) -> None:
        """Open the store (migrating it) and the state, make sure the default tenant exists, start the
        background tasks (revision poll, invalidation listener, spend writer, reservation sweeper)."""
        await self.store.open()
        try:
            await self.state.open()
            await self.admin.ensure_tenant(self.settings.auth.default_tenant)
            await self.budgets.ledger.open()
            await self.auth.start()
        except BaseException:
            await self.budgets.ledger.close()
            await self.state.close()
            await self.store.close()
            raise
        self.recorder.start()
        self.budgets.start()
        self.required = await self.auth_configured()
        self._started = True

    @property
    def started(self) -> bool:
        return self._started

    def _changed(self) -> None:
        """A key or tenant changed: while open, see whether keys are in use now."""
        if self.required or not self._started or (self._recheck and not self._recheck.done()):
            return
        self._recheck = asyncio.get_running_loop().create_task(self._check_required())

    async def _check_required(self) -> None:
        try:
            if await self.auth_configured():
                self.required = True
                log.warning("an API key exists now: every request needs one from here on")
        except Exception as e:  # the next change asks again
            log.warning("could not check whether API keys are in use: %s", e)

    async def admit(
        self, presented: str | None, ip: str | None, *, admin: bool = False, headers: bool = True
    ) -> tuple[Principal, RateDecision]:
        """Authenticate a request (the anonymous principal while open) and count it against the
        requests limits that apply. Raises an AccessError; ``admin``: only an admin key may."""
        principal = await self.identify(presented, ip, admin=admin)
        checks = self.limiter.checks(principal, ip, tokens=False)
        decision = await self.limiter.hit(checks, headers=headers) if checks else RateDecision(True)
        decision.raise_if_refused()
        return principal, decision

    async def identify(self, presented: str | None, ip: str | None, *, admin: bool = False) -> Principal:
        """``admit`` without counting the request: for a route that counts it later, together with its
        tokens and budgets (``server/metering.py``)."""
        if self.required:
            principal = await self.auth.authenticate(presented, ip)
        elif admin:
            raise PermissionDenied(
                "The admin API needs an admin key: set RAGLINE_ADMIN_KEY (or auth.admin_key_file) "
                "and restart, or use the ragline keys / tenants / spend commands."
            )
        else:
            principal = self.anonymous
        if admin and not principal.is_admin:
            raise PermissionDenied("This needs an admin key.")
        return principal

    async def auth_configured(self) -> bool:
        """Whether any key can authenticate (a bootstrap admin key, or a key in the store that is not
        revoked): without one, the server may only run open on loopback."""
        return self.admin_key_configured or await keys_in_use(self.store)

    async def close(self) -> None:
        """Drain the spend writer, then stop everything (safe to call twice)."""
        if not self._started:
            return
        self._started = False
        if self._recheck is not None:
            self._recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck
        await self.budgets.close()
        await self.budgets.ledger.close()
        await self.recorder.close()
        await self.auth.close()
        await self.state.close()
        await self.store.close()
