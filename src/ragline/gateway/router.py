"""Where a request goes: model name -> model group -> deployment, with retries and fallbacks.

The path of one request:

1. ``resolve``: routing rules may send it to another group (``rules.py``); otherwise the
   requested name is the group.
2. The chain is that group, then its fallbacks, in order.
3. In each group: pick an available deployment (healthy, breaker letting requests through,
   not rate limited) with the group's balancer; call it. A retryable failure (connect,
   429, 5xx, connection lost before the answer) is retried after a jittered backoff,
   preferring a deployment not yet tried, up to ``max_attempts`` per group. A timeout moves
   on to the next group at once. An upstream 4xx goes back to the client untouched.
4. No group left: ``NoDeploymentAvailable``. The per-request deadline bounds everything
   (waits included): past it, ``DeadlineExceeded``.

Streams follow the same path until the first chunk that carries content; chunks before it
are held back, so a failure up to then is retried without the client seeing a thing.
After it the stream is committed: a failure ends it with ``StreamInterrupted`` and is
never retried silently. Closing the stream (the client went away) closes the upstream's.

Metrics: upstream errors, retries, fallbacks, in-flight per deployment (``member.py``),
breaker states (``factory.py``). Each attempt is timed as upstream time of the current
request (``observability.context``), which also names the serving deployment; within an
HTTP request the metrics middleware then records time to first token and tokens, outside
one (library use) the router records them itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ragline.gateway.balancer import Balancer
from ragline.gateway.deployment import Deployment, has_payload
from ragline.gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    NoDeploymentAvailable,
    StreamInterrupted,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from ragline.gateway.fleet import Fleet
from ragline.gateway.health import HealthChecker
from ragline.gateway.member import Member
from ragline.gateway.retry import Deadline, RetryPolicy
from ragline.gateway.rules import RuleSet
from ragline.observability.context import current, upstream
from ragline.observability.metrics import (
    FALLBACKS,
    RETRIES,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    UPSTREAM_ERRORS,
)

log = logging.getLogger("ragline.gateway")

#: A request may lower its deadline with this header (seconds).
DEADLINE_HEADER = "x-ragline-timeout"
_NO_HEADERS: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class ModelGroup:
    """A model name and the deployments that serve it."""

    name: str
    members: tuple[Member, ...]
    balancer: Balancer
    fallbacks: tuple[str, ...] = ()

    def pick(self, now: float, tried: set[str]) -> Member | None:
        """An available member, preferring those this request has not tried yet."""
        ready = [m for m in self.members if m.available(now)]
        if not ready:
            return None
        fresh = [m for m in ready if m.name not in tried] if tried else ready
        return self.balancer.pick(fresh or ready)

    def cooling_wait(self, now: float) -> float | None:
        """Seconds until a member that is only rate limited (Retry-After) comes back, if any."""
        waits = [
            m.cooling_until - now
            for m in self.members
            if m.cooling_until > now and m.health.healthy and m.breaker.available()
        ]
        return min(waits) if waits else None


class Router:
    def __init__(
        self,
        groups: Mapping[str, ModelGroup],
        *,
        rules: RuleSet | None = None,
        retry: RetryPolicy | None = None,
        deadline: float = 120.0,
        health: HealthChecker | None = None,
        deployments: Sequence[Deployment] = (),
        fleet: Fleet | None = None,
    ) -> None:
        self._groups = dict(groups)
        self._rules = rules or RuleSet([], list(self._groups))
        self._retry = retry or RetryPolicy()
        self._deadline = deadline
        self._health = health
        self._deployments = tuple(deployments)
        self.fleet = fleet
        """Shares breaker transitions and passive health with the other replicas (``fleet.py``)."""

    # -- names ----------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Model names clients can send: the groups and the virtual models of the rules."""
        return [*self._groups, *self._rules.virtual_models]

    def handles(self, model: str) -> bool:
        return model in self._groups or model in self._rules.virtual_models

    def deployment_names(self, model: str) -> tuple[str, ...]:
        """Every deployment a request for ``model`` may end up on: its group's and its fallbacks'
        (for a virtual model, or a name this router does not serve: every deployment)."""
        group = self._groups.get(model)
        if group is None:
            return tuple(dict.fromkeys(m.name for g in self._groups.values() for m in g.members))
        names: dict[str, None] = {}
        todo, seen = [group], set()
        while todo:
            g = todo.pop()
            if g.name in seen:
                continue
            seen.add(g.name)
            names.update((m.name, None) for m in g.members)
            todo.extend(self._groups[f] for f in g.fallbacks if f in self._groups)
        return tuple(names)

    def resolve(self, model: str, headers: Mapping[str, str], body: Mapping[str, Any]) -> str:
        """The group that serves this request."""
        if self._rules:
            group = self._rules.route(model, headers, body)
            if group is not None:
                return group
        if model in self._groups:
            return model
        raise NoDeploymentAvailable(model, ["no routing rule matched the request"])

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the active health probes and the fleet's subscriber (call from the running event loop)."""
        if self.fleet is not None:
            await self.fleet.start()
        if self._health is not None:
            self._health.start()

    async def aclose(self) -> None:
        if self._health is not None:
            await self._health.stop()
        if self.fleet is not None:
            await self.fleet.stop()
        await asyncio.gather(*(d.aclose() for d in self._deployments), return_exceptions=True)

    # -- serving ----------------------------------------------------------------------------

    async def complete(
        self, body: dict[str, Any], headers: Mapping[str, str] = _NO_HEADERS
    ) -> dict[str, Any]:
        """A non-streaming chat completion, as the serving deployment returned it."""
        call = self._call(body, headers)
        while True:
            member = await call.next_member()
            started = time.monotonic()
            member.begin()
            try:
                with upstream(member.name):
                    result = await member.deployment.complete(
                        call.body_for(member), budget=call.deadline.remaining()
                    )
            except UpstreamError as e:
                member.end()
                call.failed(member, e)
                continue
            except BaseException:
                member.end()
                member.breaker.release()
                raise
            member.end()
            member.observe_latency(time.monotonic() - started)
            call.succeeded(member, result.get("usage"))
            return result

    async def stream(
        self, body: dict[str, Any], headers: Mapping[str, str] = _NO_HEADERS
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Chat completion chunks; errors before the first content chunk raise before anything is yielded."""
        call = self._call(body, headers)
        while True:
            member = await call.next_member()
            started = time.monotonic()
            chunks = member.deployment.stream(call.body_for(member), budget=call.deadline.remaining())
            member.begin()
            settled = False
            try:
                with upstream(member.name):
                    held: list[dict[str, Any]] = []
                    try:
                        async for chunk in chunks:
                            held.append(chunk)
                            if has_payload(chunk):
                                break
                        else:
                            raise UpstreamProtocolError(member.name, "the stream ended without an answer")
                    except UpstreamError as e:
                        settled = True
                        call.failed(member, e)
                        continue
                    member.observe_latency(time.monotonic() - started)
                    call.first_token(member)
                    usage: dict[str, Any] | None = None
                    for chunk in held:
                        yield chunk
                    try:
                        async for chunk in chunks:
                            if chunk.get("usage"):
                                usage = chunk["usage"]
                            yield chunk
                    except UpstreamError as e:
                        settled = True
                        call.record_failure(member, e)
                        raise StreamInterrupted(call.requested, e) from e
                    settled = True
                    call.succeeded(member, usage)
                    return
            finally:
                member.end()
                if not settled:
                    member.breaker.release()
                await chunks.aclose()

    def _call(self, body: dict[str, Any], headers: Mapping[str, str]) -> _Call:
        requested = str(body.get("model") or "")
        target = self.resolve(requested, headers, body)
        return _Call(
            self._groups,
            self._retry,
            requested,
            target,
            body,
            Deadline(self._deadline_for(headers)),
            self.fleet,
        )

    def _deadline_for(self, headers: Mapping[str, str]) -> float:
        value = headers.get(DEADLINE_HEADER)
        if value:
            try:
                asked = float(value)
            except ValueError:
                return self._deadline
            if asked > 0:
                return min(asked, self._deadline)
        return self._deadline


class _Call:
    """One request's way through its chain: the group it is in, attempts made, what failed."""

    __slots__ = (
        "attempts",
        "body",
        "chain",
        "deadline",
        "delay",
        "errors",
        "fleet",
        "group_done",
        "groups",
        "idx",
        "policy",
        "reasons",
        "requested",
        "started",
        "tried",
    )

    def __init__(
        self,
        groups: Mapping[str, ModelGroup],
        policy: RetryPolicy,
        requested: str,
        target: str,
        body: dict[str, Any],
        deadline: Deadline,
        fleet: Fleet | None = None,
    ) -> None:
        self.groups = groups
        self.fleet = fleet
        self.policy = policy
        self.requested = requested
        self.body = body
        self.deadline = deadline
        self.chain = (target, *(f for f in groups[target].fallbacks if f in groups))
        self.idx = 0
        self.attempts = 0
        self.tried: set[str] = set()
        self.delay = 0.0
        self.group_done = False
        self.reasons: list[str] = []
        self.errors: list[UpstreamError] = []
        self.started = time.monotonic()

    @property
    def group(self) -> ModelGroup:
        return self.groups[self.chain[min(self.idx, len(self.chain) - 1)]]

    def body_for(self, member: Member) -> dict[str, Any]:
        return {**self.body, "model": member.deployment.model}

    async def next_member(self) -> Member:
        policy = self.policy
        while True:
            if self.deadline.expired():
                raise DeadlineExceeded(self.requested, self.deadline.seconds)
            if self.idx >= len(self.chain):
                raise self._exhausted()
            group = self.group
            if self.group_done or self.attempts >= policy.max_attempts:
                self._next_group()
                continue
            if self.delay > 0:
                if self.delay >= self.deadline.remaining():
                    self.reasons.append(f"model '{group.name}': no time left to retry before the deadline")
                    self._next_group()
                    continue
                await asyncio.sleep(self.delay)
                self.delay = 0.0
                continue
            now = time.monotonic()
            member = group.pick(now, self.tried)
            if member is None:
                wait = group.cooling_wait(now)
                if wait is not None and wait <= policy.max_retry_after and wait < self.deadline.remaining():
                    self.delay = wait
                    continue
                for m in group.members:
                    if not m.available(now):
                        self.reasons.append(m.why_unavailable(now))
                        if m.health.healthy and now >= m.cooling_until:
                            UPSTREAM_ERRORS.labels(deployment=m.name, kind="breaker_open").inc()
                self._next_group()
                continue
            if not member.breaker.acquire():  # cannot happen between available() and here; be safe
                self._next_group()
                continue
            # the half-open probe (never the closed path): one at a time across the replicas
            if (
                self.fleet is not None
                and member.breaker.probing
                and not await self.fleet.claim_probe(member, self.deadline.remaining() + 1.0)
            ):
                continue  # another replica probes: this one holds its breaker open meanwhile
            self.attempts += 1
            if self.attempts > 1:
                RETRIES.labels(model=group.name, deployment=member.name).inc()
            return member

    def record_failure(self, member: Member, err: UpstreamError) -> None:
        """Count a failed attempt against the deployment (metrics, breaker, passive health).

        The client only learns the deployment and the kind of failure (``str(err)``); what the
        transport or the upstream said goes to the log (URL credentials redacted).
        """
        UPSTREAM_ERRORS.labels(deployment=member.name, kind=err.kind).inc()
        log.log(
            logging.WARNING if err.counts_as_failure else logging.INFO,
            "model %s: deployment %s failed (%s): %s",
            self.requested,
            member.name,
            err.kind,
            err.detail,
        )
        if err.counts_as_failure:
            member.breaker.record_failure()
        elif isinstance(err, UpstreamStatusError) and err.status == 429:
            member.breaker.release()
        else:
            member.breaker.record_success()  # it answered: the deployment works, the request did not
        member.health.record_request(connect_failed=isinstance(err, UpstreamConnectError))

    def failed(self, member: Member, err: UpstreamError) -> None:
        """Record a failed attempt; raise when the request ends here, else set up the next attempt."""
        self.record_failure(member, err)
        if isinstance(err, UpstreamStatusError) and not err.retryable:
            raise err
        if self.deadline.expired():
            raise DeadlineExceeded(self.requested, self.deadline.seconds) from err
        self.errors.append(err)
        self.reasons.append(str(err))
        if not err.retryable:
            self.group_done = True
            return
        self.tried.add(member.name)
        policy = self.policy
        retry_after = policy.retry_after(err)
        if retry_after is not None:
            member.cool_down(retry_after)
        self.delay = policy.backoff(self.attempts)

    def first_token(self, member: Member) -> None:
        if current() is None:  # inside an HTTP request the metrics middleware records it
            ttft = time.monotonic() - self.started
            TIME_TO_FIRST_TOKEN.labels(model=self.group.name, deployment=member.name).observe(ttft)

    def succeeded(self, member: Member, usage: Any) -> None:
        member.breaker.record_success()
        member.health.record_request(connect_failed=False)
        group = self.group.name
        if self.idx > 0:
            FALLBACKS.labels(model=self.chain[0], fallback=group).inc()
        if isinstance(usage, dict) and current() is None:  # else the metrics middleware counts them
            for direction, key in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
                n = usage.get(key)
                if isinstance(n, int) and n > 0:
                    TOKENS.labels(model=group, deployment=member.name, direction=direction).inc(n)

    def _next_group(self) -> None:
        self.idx += 1
        self.attempts = 0
        self.tried.clear()
        self.delay = 0.0
        self.group_done = False

    def _exhausted(self) -> GatewayError:
        # Every failure a rate limit: say so (429 and its Retry-After), rather than "unavailable".
        if self.errors and all(isinstance(e, UpstreamStatusError) and e.status == 429 for e in self.errors):
            return self.errors[-1]
        return NoDeploymentAvailable(self.requested, self.reasons)
