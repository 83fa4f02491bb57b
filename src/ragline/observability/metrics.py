"""Prometheus metrics: one registry per process, the metric objects every module records into.

Exposed at ``/metrics`` by the server. Label sets stay small and bounded: model
names and deployment names come from configuration, statuses from a fixed set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the exposition and nobody graphs them
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "ragline_requests_total",
    "API requests by route, model, deployment and status code",
    ["route", "model", "deployment", "status"],
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "ragline_request_duration_seconds",
    "End-to-end request latency",
    ["route", "model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "ragline_time_to_first_token_seconds",
    "Time from request start to the first streamed token",
    ["model", "deployment"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "ragline_tokens_total",
    "Tokens processed, by direction (prompt|completion)",
    ["model", "deployment", "direction"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "ragline_upstream_errors_total",
    "Upstream failures by kind (connect|timeout|status_5xx|status_429|status_4xx|stream_reset|breaker_open)",
    ["deployment", "kind"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "ragline_retries_total", "Retried upstream attempts", ["model", "deployment"], registry=REGISTRY
)
FALLBACKS = Counter(
    "ragline_fallbacks_total", "Requests served by a fallback model", ["model", "fallback"], registry=REGISTRY
)
BREAKER_STATE = Gauge(
    "ragline_breaker_state",
    "Circuit breaker state per deployment (0 closed, 1 half-open, 2 open)",
    ["deployment"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("ragline_in_flight_requests", "Requests being served", ["route"], registry=REGISTRY)
DEPLOYMENT_IN_FLIGHT = Gauge(
    "ragline_deployment_in_flight", "Requests in flight per deployment", ["deployment"], registry=REGISTRY
)
EMBEDDING_BATCH_SIZE = Histogram(
    "ragline_embedding_batch_size",
    "Texts per embedding model call made by the dynamic batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
OVERHEAD = Histogram(
    "ragline_overhead_seconds",
    "Time a request spent in ragline itself (end-to-end latency minus time waiting for models/upstreams)",
    ["route"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
EMBEDDING_QUEUE_DEPTH = Gauge(
    "ragline_embedding_queue_depth",
    "Embedding requests waiting for the dynamic batcher",
    registry=REGISTRY,
)
CACHE_REQUESTS = Counter(
    "ragline_cache_requests_total",
    "Cacheable requests by outcome (hit|semantic-hit|miss|bypass: no-cache asked)",
    ["result"],
    registry=REGISTRY,
)
CACHE_VETOES = Counter(
    "ragline_cache_vetoes_total",
    "Stored questions similar enough to hit that the second check told apart (not served)",
    registry=REGISTRY,
)
CACHE_STALE = Counter(
    "ragline_cache_stale_total",
    "Entries found but not served because a document they were built from changed or went",
    registry=REGISTRY,
)
CACHE_SAVED_SECONDS = Counter(
    "ragline_cache_saved_seconds_total",
    "Answering time saved by cache hits (what each answer took the first time)",
    registry=REGISTRY,
)
CACHE_SAVED_USD = Counter(
    "ragline_cache_saved_usd_total",
    "Cost saved by cache hits, at the price table's prices (prices.*)",
    registry=REGISTRY,
)
CACHE_ENTRIES = Gauge("ragline_cache_entries", "Responses kept in this process's cache", registry=REGISTRY)
CACHE_EVICTIONS = Counter(
    "ragline_cache_evictions_total",
    "Entries evicted to keep the cache within cache.max_entries",
    registry=REGISTRY,
)
CACHE_ERRORS = Counter(
    "ragline_cache_errors_total",
    "Cache reads and writes that failed (the shared store unreachable); those requests were answered "
    "without the cache",
    registry=REGISTRY,
)
