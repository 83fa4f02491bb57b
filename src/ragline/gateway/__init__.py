"""The LLM gateway: model names routed to deployments, with balancing, retries, breakers and fallbacks.

Module map (one concern each):

- ``deployment``: the Deployment protocol (and ``Timeouts``); ``local`` and ``upstream``
  implement it for the embedded model and for OpenAI-compatible servers; ``sse`` decodes
  their event streams; ``httpclient`` is the upstreams' keep-alive HTTP/1.1 client and
  ``codec`` their JSON (orjson).
- ``balancer``: round robin, least in flight, weighted, lowest latency.
- ``breaker``: the per-deployment circuit breaker.
- ``retry``: which failures are retried, backoff with full jitter, Retry-After, the deadline.
- ``health``: active probes and passive failure tracking.
- ``fleet``: breaker transitions and passive health shared across replicas (``ragline.state``).
- ``rules``: routing by task type, prompt size and cost tier.
- ``member``: a deployment plus the live state the router reads.
- ``router``: the request path through groups, retries and fallbacks; metrics.
- ``factory``: builds a Router from the ``gateway`` settings.
- ``errors``: what went wrong, as a small exception hierarchy.
"""

from ragline.gateway.deployment import Deployment, Timeouts
from ragline.gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    NoDeploymentAvailable,
    StreamInterrupted,
    UpstreamError,
    UpstreamStatusError,
)
from ragline.gateway.factory import build_router
from ragline.gateway.router import ModelGroup, Router

__all__ = [
    "DeadlineExceeded",
    "Deployment",
    "GatewayError",
    "ModelGroup",
    "NoDeploymentAvailable",
    "Router",
    "StreamInterrupted",
    "Timeouts",
    "UpstreamError",
    "UpstreamStatusError",
    "build_router",
]
