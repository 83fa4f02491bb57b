"""Build a Router from the ``gateway`` settings: the only place that knows both.

Deployments are created once each (one HTTP connection pool per upstream), wrapped in a
Member with its breaker and health state, and shared by every model group that names them.
"""

from __future__ import annotations

from collections.abc import Callable

from ragline.answer.llm import LLM
from ragline.config import GatewayDeploymentSettings, LLMSettings, Settings
from ragline.errors import ConfigError
from ragline.gateway.balancer import build_balancer
from ragline.gateway.breaker import BreakerState, CircuitBreaker
from ragline.gateway.deployment import Deployment, Timeouts
from ragline.gateway.fleet import Fleet
from ragline.gateway.health import HealthChecker, HealthState
from ragline.gateway.local import LocalDeployment, ThreadRunner
from ragline.gateway.member import Member
from ragline.gateway.retry import RetryPolicy
from ragline.gateway.router import ModelGroup, Router
from ragline.gateway.rules import Rule, RuleSet
from ragline.gateway.upstream import OpenAIDeployment
from ragline.observability.metrics import BREAKER_STATE
from ragline.state.base import SharedState


def build_router(
    settings: Settings,
    local_llm: Callable[[], LLM],
    *,
    run_in_thread: ThreadRunner | None = None,
    state: SharedState | None = None,
) -> Router:
    """The gateway described by ``settings.gateway``.

    ``local_llm`` gives the embedded model when a kind=local deployment first needs it;
    ``run_in_thread`` runs its blocking calls (default: ``asyncio.to_thread``); ``state``: breaker
    transitions and passive health are shared through it with every router on the same state
    (``fleet.py``; None: this router's own).
    """
    gw = settings.gateway
    reserved = settings.server.local_model
    names = [*gw.models, *(r.model for r in gw.rules if r.model is not None)]
    if reserved in names:
        raise ConfigError(
            f"gateway model '{reserved}' has the name of the embedded model (server.local_model); "
            "rename one of them"
        )
    health = gw.health
    members: dict[str, Member] = {}
    for d in gw.deployments:
        breaker = CircuitBreaker(
            consecutive_failures=gw.breaker.consecutive_failures,
            failure_rate=gw.breaker.failure_rate,
            window=gw.breaker.window,
            min_requests=gw.breaker.min_requests,
            cooldown=gw.breaker.cooldown_s,
            on_change=_breaker_gauge(d.name),
        )
        BREAKER_STATE.labels(deployment=d.name).set(int(BreakerState.CLOSED))
        health_state = HealthState(
            probed=d.kind == "openai" and d.health_check and health.interval_s > 0,
            unhealthy_after=health.unhealthy_after,
            healthy_after=health.healthy_after,
            passive_failures=health.passive_failures,
        )
        deployment = _deployment(d, local_llm, settings.llm, run_in_thread)
        members[d.name] = Member(deployment, breaker, health_state, weight=d.weight)
    groups = {
        name: ModelGroup(
            name=name,
            members=tuple(members[d] for d in m.deployments),
            balancer=build_balancer(m.strategy),
            fallbacks=tuple(m.fallbacks),
        )
        for name, m in gw.models.items()
    }
    rules = RuleSet(
        [
            Rule(
                group=r.group,
                model=r.model,
                tasks=frozenset(t.lower() for t in r.task) if r.task is not None else None,
                tiers=frozenset(t.lower() for t in r.tier) if r.tier is not None else None,
                min_chars=r.min_chars,
                max_chars=r.max_chars,
                min_tokens=r.min_tokens,
                max_tokens=r.max_tokens,
            )
            for r in gw.rules
        ],
        list(groups),
    )
    retry = RetryPolicy(
        max_attempts=gw.retry.max_attempts,
        backoff_base=gw.retry.backoff_base_s,
        backoff_max=gw.retry.backoff_max_s,
        max_retry_after=gw.retry.max_retry_after_s,
    )
    checker = HealthChecker(list(members.values()), interval=health.interval_s, timeout=health.timeout_s)
    return Router(
        groups,
        rules=rules,
        retry=retry,
        deadline=gw.deadline_s,
        health=checker,
        deployments=[m.deployment for m in members.values()],
        fleet=Fleet(state, list(members.values())) if state is not None and members else None,
    )


def _deployment(
    d: GatewayDeploymentSettings,
    local_llm: Callable[[], LLM],
    llm: LLMSettings,
    run_in_thread: ThreadRunner | None,
) -> Deployment:
    timeouts = Timeouts(
        connect=d.timeouts.connect_s, first_token=d.timeouts.first_token_s, total=d.timeouts.total_s
    )
    if d.kind == "local":
        return LocalDeployment(
            d.name,
            local_llm,
            model=d.model or "local",
            max_tokens=llm.max_tokens,
            temperature=llm.temperature,
            timeouts=timeouts,
            run_in_thread=run_in_thread,
            n_ctx=llm.n_ctx,
            n_parallel=llm.n_parallel,
        )
    assert d.base_url is not None and d.model is not None  # settings validation guarantees both
    return OpenAIDeployment(
        d.name,
        base_url=d.base_url,
        model=d.model,
        api_key=d.api_key.get_secret_value() if d.api_key is not None else None,
        timeouts=timeouts,
        max_connections=d.max_connections,
    )


def _breaker_gauge(deployment: str) -> Callable[[BreakerState], None]:
    gauge = BREAKER_STATE.labels(deployment=deployment)

    def on_change(state: BreakerState) -> None:
        gauge.set(int(state))

    return on_change
