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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from ragline.access import AccessControl, PermissionDenied, RateDecision, Reservation
from ragline.access.ledger import RedisLedger
from ragline.gateway.rules import CHARS_PER_TOKEN
from ragline.server.access_mw import RequestAccess

log = logging.getLogger("ragline.server.metering")

SETTLE_LINGER_S = 0.005
"""Completion tokens wait this long for other calls' to share their round trip."""


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
        self._settle_tokens: list[tuple[RateDecision, int]] = []
        self._settler: asyncio.Task[None] | None = None

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
        """Count the request (when its middleware left that to the route) and its prompt's tokens
        against the rate limits, and reserve the budgets; raises RateLimited / BudgetExceeded.

        With Redis all of it is one pipeline (one round trip): the limits' scripts and the budget
        ledger's. Otherwise the limits first (in process: no I/O), then the reservation.
        """
        if ra is None:
            return None
        access = self._access
        limiter, budgets = access.limiter, access.budgets
        deferred = ra.pending
        ra.pending = ()
        checks = [*deferred, *limiter.checks(ra.principal, ra.ip, requests=False)]
        reservation = budgets.plan(ra.principal, model, prompt_tokens, max_tokens, self._deployments(model))
        piped, ledger = limiter.pipelined, budgets.ledger
        decision: RateDecision | None = None
        if checks and piped is not None and (not reservation.items or isinstance(ledger, RedisLedger)):
            pairs = limiter.pairs(checks, prompt_tokens)
            calls = piped.calls(pairs)
            args = budgets.ledger_args(reservation) if reservation.items else None
            if args is not None:
                calls.append(cast(RedisLedger, ledger).reserve_call(*args))
            replies = await piped.eval_many(calls)
            decision = limiter.decide(checks, piped.results(pairs, replies))
            reserved = True
            if args is not None:
                reserved = await cast(RedisLedger, ledger).reserved(replies[-1], *args)
            self._record(ra, decision, bool(deferred))
            if not decision.allowed:
                if reserved and reservation.items:
                    budgets.release(reservation)
                decision.raise_if_refused()
            await budgets.confirm(reservation, reserved)
            return Ticket(ra, reservation, decision)
        if checks:
            decision = await limiter.hit(checks, prompt_tokens)
            self._record(ra, decision, bool(deferred))
            decision.raise_if_refused()
        if reservation.items:
            await budgets.confirm(reservation, await ledger.reserve(*budgets.ledger_args(reservation)))
        return Ticket(ra, reservation, decision)

    @staticmethod
    def _record(ra: RequestAccess, decision: RateDecision, with_requests: bool) -> None:
        """Put the decision where the response's ``x-ratelimit-*`` headers are read from."""
        if with_requests:
            ra.requests = decision  # requests and tokens limits in one decision
        else:
            ra.tokens = decision

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
            self._settle_tokens.append((ticket.tokens, completion_tokens))
            if self._settler is None or self._settler.done():
                self._settler = asyncio.get_running_loop().create_task(
                    self._settle(), name="ragline-token-settle"
                )

    def release(self, ticket: Ticket | None) -> None:
        """The call failed before it produced anything: release the reservation, spend nothing."""
        if ticket is None or ticket.done:
            return
        ticket.done = True
        self._access.budgets.release(ticket.reservation)

    async def _settle(self) -> None:
        """Count finished calls' completion tokens, many calls in one go (one Redis round trip)."""
        await asyncio.sleep(SETTLE_LINGER_S)
        while self._settle_tokens:
            batch, self._settle_tokens = self._settle_tokens, []
            try:
                await self._access.limiter.settle_tokens(batch)
            except Exception as e:  # a lost count, never a failed request
                log.warning("could not count completion tokens against the tokens limits: %s", e)

    async def drain(self) -> None:
        """Wait for the completion-token counts still in flight (at shutdown)."""
        while self._settler is not None and not self._settler.done():
            await asyncio.gather(self._settler, return_exceptions=True)
