"""Deployment health: active probes on an interval, and passive tracking of real traffic.

Active: every ``interval`` seconds each probed deployment gets ``GET {base_url}/models``
(the local model is always ready once loaded). ``unhealthy_after`` failed probes in a row
take it out of rotation; ``healthy_after`` good ones bring it back. Passive: connect
failures on real requests take a probed deployment out after ``passive_failures`` in a
row, without waiting for the next probe; the probes bring it back. Deployments that are
not probed are never taken out by health (their circuit breaker still guards them), since
nothing would bring them back.

Across replicas (``gateway/fleet.py``): ``on_passive_down`` hears this process's passive
take-outs, which the fleet broadcasts; ``mark_unhealthy`` applies another replica's. Each
replica's own probes bring a deployment back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from ragline.gateway.deployment import Deployment
from ragline.gateway.errors import UpstreamError

log = logging.getLogger("ragline.gateway")


class HealthState:
    __slots__ = (
        "_bad_probes",
        "_good_probes",
        "_passive",
        "healthy",
        "healthy_after",
        "on_passive_down",
        "passive_failures",
        "probed",
        "unhealthy_after",
    )

    def __init__(
        self, *, probed: bool, unhealthy_after: int = 2, healthy_after: int = 1, passive_failures: int = 3
    ) -> None:
        self.probed = probed
        self.unhealthy_after = unhealthy_after
        self.healthy_after = healthy_after
        self.passive_failures = passive_failures
        self.healthy = True
        self._bad_probes = 0
        self._good_probes = 0
        self._passive = 0
        self.on_passive_down: Callable[[], None] | None = None
        """Told when this process's connect failures take the deployment out of rotation."""

    def record_probe(self, ok: bool) -> None:
        if ok:
            self._bad_probes = 0
            self._good_probes += 1
            if not self.healthy and self._good_probes >= self.healthy_after:
                self.healthy = True
                self._passive = 0
        else:
            self._good_probes = 0
            self._bad_probes += 1
            if self._bad_probes >= self.unhealthy_after:
                self.healthy = False

    def record_request(self, *, connect_failed: bool) -> None:
        if not connect_failed:
            self._passive = 0
            return
        self._passive += 1
        if self.probed and self._passive >= self.passive_failures:
            was = self.healthy
            self.mark_unhealthy()
            if was and self.on_passive_down is not None:
                self.on_passive_down()

    def mark_unhealthy(self) -> None:
        """Out of rotation until the probes bring it back (a deployment nobody probes stays in)."""
        if self.probed:
            self.healthy = False
            self._good_probes = 0


class Probed(Protocol):
    @property
    def deployment(self) -> Deployment: ...

    @property
    def health(self) -> HealthState: ...


class HealthChecker:
    """Runs the active probes in one background task."""

    def __init__(self, members: Sequence[Probed], *, interval: float, timeout: float) -> None:
        self._members = [m for m in members if m.health.probed]
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._interval > 0 and bool(self._members)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="ragline-gateway-health")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def check_once(self) -> None:
        await asyncio.gather(*(self._probe(m) for m in self._members))

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)

    async def _probe(self, member: Probed) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await member.deployment.probe(self._timeout)
        except (UpstreamError, TimeoutError) as e:
            was = member.health.healthy
            member.health.record_probe(False)
            if was and not member.health.healthy:
                why = e.detail if isinstance(e, UpstreamError) else "probe timed out"
                log.warning("deployment %s left rotation: %s", member.deployment.name, why)
            return
        was = member.health.healthy
        member.health.record_probe(True)
        if not was and member.health.healthy:
            log.warning("deployment %s is healthy again", member.deployment.name)
