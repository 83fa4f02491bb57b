"""Around every model call: the key's model allow-list, the tokens limits and the budgets.

``begin`` runs before the call, once the request is read: it refuses a model the key may not use
(403), counts the prompt's tokens against the tokens limits (429 with ``Retry-After``) and reserves
the request's maximum cost in every budget that applies (429 ``insufficient_quota``), all before
any upstream is called. ``finish`` settles the real cost from the call's usage and adds its
completion tokens to the tokens limits; ``release`` gives the reservation back when the call
failed. Both return at once: the writes happen off the request path (``access/spend.py``).

The prompt's tokens are estimated before the call as the gateway's rules do (characters / 4,
``gateway/rules.py``); the settled cost is the upstream's own count. A request without
``max_tokens`` that a budget applies to reserves ``spend.assumed_max_tokens`` (or its model's
lower cap) and is sent on with that ``max_tokens``, so no call can cost more than it reserved
except by a prompt longer in tokens than the estimate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from ragline.access import AccessControl, PermissionDenied, RateDecision, Reservation
from ragline.gateway.rules import CHARS_PER_TOKEN
from ragline.server.access_mw import RequestAccess

log = logging.getLogger("ragline.server.metering")


@dataclass(slots=True)
class Ticket:
    """One metered call: what ``finish`` or ``release`` settles."""

    access: RequestAccess
    reservation: Reservation
    tokens: RateDecision | None
    done: bool = False


def estimate_tokens(chars: int, messages: int = 0) -> int:
    """Prompt tokens before the call: characters / 4, and 4 per message for the chat template."""
    return -(-chars // CHARS_PER_TOKEN) + 4 * messages


class Meter:
    def __init__(self, access: AccessControl, deployments: Callable[[str], Sequence[str]]) -> None:
        self._access = access
        self._deployments = deployments
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def check_model(ra: RequestAccess | None, *models: str) -> None:
        """403 unless the key may use every one of ``models``."""
        if ra is None:
            return
        for m in models:
            if not ra.principal.may_use(m):
                raise PermissionDenied(f"This API key may not use the model '{m}'.")

    def needs_max_tokens(self, ra: RequestAccess | None) -> bool:
        """Whether a request with no ``max_tokens`` must be given one: a budget applies to its key."""
        if ra is None:
            return False
        p = ra.principal
        return p.key_budget is not None or p.tenant_budget is not None

    @property
    def assumed_max_tokens(self) -> int:
        return self._access.settings.spend.assumed_max_tokens

    async def begin(
        self, ra: RequestAccess | None, model: str, prompt_tokens: int, max_tokens: int
    ) -> Ticket | None:
        """Count the tokens limits and reserve the budgets; raises RateLimited / BudgetExceeded."""
        if ra is None:
            return None
        access = self._access
        checks = access.limiter.checks(ra.principal, ra.ip, requests=False)
        p, deployments = ra.principal, self._deployments(model)
        if checks and access.state.kind != "memory" and access.budgets.ledger.kind != "memory":
            # two round trips (to Redis, and to Redis or the store): at the same time
            decision, reservation = await asyncio.gather(
                access.limiter.hit(checks, prompt_tokens),
                access.budgets.reserve(p, model, prompt_tokens, max_tokens, deployments),
                return_exceptions=True,
            )
            refused = isinstance(decision, BaseException) or not decision.allowed
            if refused and not isinstance(reservation, BaseException):
                access.budgets.release(reservation)
            if isinstance(decision, BaseException):
                raise decision
            ra.tokens = decision
            decision.raise_if_refused()
            if isinstance(reservation, BaseException):
                raise reservation
            return Ticket(ra, reservation, decision)
        tokens: RateDecision | None = None
        if checks:
            tokens = await access.limiter.hit(checks, prompt_tokens)
            ra.tokens = tokens
            tokens.raise_if_refused()
        return Ticket(
            ra, await access.budgets.reserve(p, model, prompt_tokens, max_tokens, deployments), tokens
        )

    def finish(
        self,
        ticket: Ticket | None,
        *,
        deployment: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached: bool = False,
    ) -> None:
        """Settle the call's real cost and count its completion tokens (never blocks)."""
        if ticket is None or ticket.done:
            return
        ticket.done = True
        self._access.budgets.settle(
            ticket.reservation,
            deployment=deployment or "unknown",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached=cached,
        )
        if ticket.tokens is not None and ticket.tokens.token_checks and completion_tokens > 0:
            self._spawn(self._settle_tokens(ticket.tokens, completion_tokens))

    def release(self, ticket: Ticket | None) -> None:
        """The call failed before it produced anything: release the reservation, spend nothing."""
        if ticket is None or ticket.done:
            return
        ticket.done = True
        self._access.budgets.release(ticket.reservation)

    async def _settle_tokens(self, decision: RateDecision, completion_tokens: int) -> None:
        try:
            await self._access.limiter.settle_tokens(decision, completion_tokens)
        except Exception as e:  # a lost count, never a failed request
            log.warning("could not count completion tokens against the tokens limits: %s", e)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the completion-token counts still in flight (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
