"""Access control as one object: the store, the shared state and every access part, from the settings.

The request pipeline uses its parts in this order: ``auth.authenticate`` -> ``limiter.admit`` ->
``budgets.reserve`` -> (the call) -> ``budgets.settle`` and ``limiter.settle_tokens``.
"""

from __future__ import annotations

from ragline.access.admin import AccessAdmin
from ragline.access.authn import Authenticator
from ragline.access.bootstrap import load_admin_key
from ragline.access.budget import BudgetKeeper
from ragline.access.prices import PriceTable
from ragline.access.ratelimit import Limiter
from ragline.access.spend import SpendRecorder
from ragline.config import Settings
from ragline.state.base import SharedState
from ragline.state.factory import build_state
from ragline.store.base import RecordStore
from ragline.store.factory import build_store


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
        self.budgets = BudgetKeeper(self.store, self.prices, self.recorder, settings.spend)
        self.auth = Authenticator(
            self.store,
            self.state,
            settings.auth,
            limiter=self.limiter,
            admin_key=admin_key,
        )
        self.admin = AccessAdmin(self.store, self.state)
        self._started = False

    async def start(self) -> None:
        """Open the store (migrating it) and the state, make sure the default tenant exists, start the
        background tasks (revision poll, invalidation listener, spend writer, reservation sweeper)."""
        await self.store.open()
        try:
            await self.state.open()
            await self.admin.ensure_tenant(self.settings.auth.default_tenant)
            await self.auth.start()
        except BaseException:
            await self.state.close()
            await self.store.close()
            raise
        self.recorder.start()
        self.budgets.start()
        self._started = True

    async def auth_configured(self) -> bool:
        """Whether any key can authenticate (a bootstrap admin key, or a key in the store that is not
        revoked): without one, the server may only run open on loopback."""
        if self.admin_key_configured:
            return True
        return any(k.revoked_at is None for k in await self.store.list_keys())

    async def close(self) -> None:
        """Drain the spend writer, then stop everything (safe to call twice)."""
        if not self._started:
            return
        self._started = False
        await self.budgets.close()
        await self.recorder.close()
        await self.auth.close()
        await self.state.close()
        await self.store.close()
