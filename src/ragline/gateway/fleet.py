"""Breakers and passive health shared by every replica, through the shared state (``ragline.state``).

Each replica keeps its own breakers and reads them on every request with no I/O (``breaker.py``);
only transitions travel, on the ``gateway`` channel:

- a breaker this replica's outcomes trip is published as ``open`` with its cooldown, and kept under
  the key ``breaker:<deployment>`` (value: the wall-clock time it opens until, TTL: the cooldown),
  so a replica that starts or resubscribes late reads it; every other replica opens its own
  breaker for the remaining cooldown (``CircuitBreaker.open_for``) and fails fast from then on;
- a probe that succeeds is published as ``close`` (the key is deleted): every replica closes;
- the half-open probe is claimed fleet-wide: the replica whose request took its local probe slot
  sets ``probe:<deployment>`` if absent (TTL: the request's deadline) before sending it; a replica
  that loses the claim holds its breaker open ``PROBE_HOLD_S`` and asks again after that, so one
  probe at a time goes out across the fleet, and a prober that dies frees the claim by its TTL.
  The claim is made only when a breaker is half-open, never on the closed path;
- a deployment that this replica's connect failures take out of rotation (passive health) is
  published as ``down``: every replica takes it out, and its own active probes bring it back.

Messages name the replica that sent them (each replica ignores its own). They are written in
order by one background task, so the request that caused a transition never waits for Redis.
With the in-process state the same messages reach every router of this process.

When the shared state fails (Redis down), breakers keep working locally: the failure is logged
once, a probe claim that fails counts as won (each replica then probes for itself), messages that
cannot be sent are dropped, and the subscriber retries every ``RESUBSCRIBE_S``; when Redis is back
it resubscribes, reads the open breakers again and logs that sharing resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from ragline.gateway.breaker import BreakerEvent, BreakerState, CircuitBreaker
from ragline.gateway.health import HealthState
from ragline.state.base import SharedState

log = logging.getLogger("ragline.gateway")

CHANNEL = "gateway"
PROBE_HOLD_S = 1.0
"""A replica that lost the probe claim keeps its breaker open this long, then asks again."""
CLAIM_TIMEOUT_S = 0.25
"""The most a probe claim may wait for the shared state before it counts as won (local-only)."""
RESUBSCRIBE_S = 1.0
START_WAIT_S = 2.0
"""How long ``start`` waits for the subscription (a state that is down does not hold up start-up)."""


class FleetMember(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def breaker(self) -> CircuitBreaker: ...

    @property
    def health(self) -> HealthState: ...


@dataclass(frozen=True, slots=True)
class _Out:
    """One write, in order: ``open``/``close``/``down`` are published; ``release`` only frees a claim."""

    event: str
    deployment: str
    for_s: float = 0.0


class Fleet:
    """The shared side of every member's breaker and passive health (one per router)."""

    def __init__(self, state: SharedState, members: Sequence[FleetMember]) -> None:
        self._state = state
        self._members = {m.name: m for m in members}
        self.origin = uuid.uuid4().hex[:16]
        """This replica's id in the messages."""
        self._outbox: asyncio.Queue[_Out] = asyncio.Queue()
        self._claimed: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self._lost_since: float | None = None
        self.applied = 0
        """Messages from other replicas applied here (a test and a metric)."""
        for m in members:
            m.breaker.on_event = partial(self._breaker_event, m)
            m.health.on_passive_down = partial(self._outbox.put_nowait, _Out("down", m.name))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe (and read the breakers open now) before returning, or give up waiting after
        ``START_WAIT_S`` while the subscriber keeps retrying in the background."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._listen(), name="ragline-fleet-listen"))
        self._tasks.append(loop.create_task(self._write(), name="ragline-fleet-write"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), START_WAIT_S)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for name in list(self._claimed):  # a probe this replica will never finish: let another go
            await self._free_claim(name)

    @property
    def sharing(self) -> bool:
        """False while the shared state is failing (breakers are local-only then)."""
        return self._lost_since is None

    # -- the half-open probe ---------------------------------------------------------------------

    async def claim_probe(self, member: FleetMember, ttl_s: float) -> bool:
        """The caller holds ``member``'s local probe slot: may it send the probe? True when this
        replica won the fleet-wide claim (or the shared state failed: local-only). False: another
        replica's probe is out; the local breaker is held open ``PROBE_HOLD_S``."""
        name = member.name
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT_S):
                won = await self._state.set_if_absent(f"probe:{name}", self.origin.encode(), ttl_s)
        except Exception as e:  # Redis away (or too slow): this replica probes for itself
            self._lost(e)
            return member.breaker.probing
        self._back()
        if won:
            self._claimed.add(name)
        if not member.breaker.probing:  # another replica's breaker moved while we asked
            if won:
                self._outbox.put_nowait(_Out("release", name))
            return False
        if not won:
            member.breaker.open_for(PROBE_HOLD_S)
        return won

    # -- this replica's transitions -> the fleet -------------------------------------------------

    def _breaker_event(self, member: FleetMember, event: BreakerEvent) -> None:
        if event is BreakerEvent.TRIPPED:
            self._outbox.put_nowait(_Out("open", member.name, member.breaker.cooldown))
        elif event is BreakerEvent.CLOSED:
            self._outbox.put_nowait(_Out("close", member.name))
        else:
            self._outbox.put_nowait(_Out("release", member.name))

    async def _write(self) -> None:
        while True:
            out = await self._outbox.get()
            try:
                await self._send(out)
            except Exception as e:  # dropped: the replicas' own breakers still guard them
                self._lost(e)
            else:
                self._back()

    async def _send(self, out: _Out) -> None:
        name = out.deployment
        if out.event != "release":
            message = {"from": self.origin, "event": out.event, "deployment": name, "for_s": out.for_s}
            await self._state.publish(CHANNEL, json.dumps(message))
        if out.event == "open":
            until = str(time.time() + out.for_s).encode()
            await self._state.set(f"breaker:{name}", until, ttl_s=out.for_s)
        elif out.event == "close":
            await self._state.delete(f"breaker:{name}")
        if out.event in ("open", "close", "release") and name in self._claimed:
            await self._free_claim(name)

    async def _free_claim(self, name: str) -> None:
        self._claimed.discard(name)
        with contextlib.suppress(Exception):  # or it expires by its TTL
            async with asyncio.timeout(CLAIM_TIMEOUT_S * 4):
                await self._state.delete(f"probe:{name}")

    # -- the fleet -> this replica ---------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            try:
                async with self._state.subscribe(CHANNEL) as messages:
                    await self._resync()
                    self._subscribed.set()
                    self._back()
                    async for m in messages:
                        self._apply(m)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._lost(e)
                await asyncio.sleep(RESUBSCRIBE_S)

    async def _resync(self) -> None:
        """Open every breaker that another replica holds open now (read from its key)."""
        for name, member in self._members.items():
            raw = await self._state.get(f"breaker:{name}")
            if raw is None:
                continue
            try:
                remaining = float(raw) - time.time()
            except ValueError:
                continue
            b = member.breaker
            if remaining > 0 and (b.state is BreakerState.CLOSED or remaining > b.retry_in()):
                b.open_for(remaining)

    def _apply(self, raw: str) -> None:
        try:
            m = json.loads(raw)
            origin, event, name = m["from"], m["event"], m["deployment"]
            for_s = float(m.get("for_s", 0.0))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed message on the gateway channel")
            return
        member = self._members.get(name)
        if origin == self.origin or member is None:
            return
        self.applied += 1
        if event == "open":
            member.breaker.open_for(for_s)
        elif event == "close":
            member.breaker.close()
        elif event == "down":
            was = member.health.healthy
            member.health.mark_unhealthy()
            if was and not member.health.healthy:
                log.warning("deployment %s left rotation: connect failures on another replica", name)

    # -- failures of the shared state ------------------------------------------------------------

    def _lost(self, e: BaseException) -> None:
        if self._lost_since is None:
            self._lost_since = time.monotonic()
            log.warning(
                "gateway breakers are local-only: the shared state failed (%s: %s)", type(e).__name__, e
            )

    def _back(self) -> None:
        if self._lost_since is not None:
            log.warning(
                "gateway breakers are shared again (after %.1f s)", time.monotonic() - self._lost_since
            )
            self._lost_since = None
