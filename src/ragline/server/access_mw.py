"""Who may call, as a pure ASGI middleware: every route but health needs an API key.

Per request: the key from ``Authorization: Bearer <key>`` or ``x-api-key``, authenticated from
the per-process cache (``access/authn.py``), then the requests limits. A refusal is answered here,
OpenAI-shaped (401 ``invalid_api_key``, 403, 429 with ``Retry-After``, 503 when the record store
is down). An admitted request carries its ``RequestAccess`` in the ASGI scope
(``scope["ragline.access"]``) for the routes: the tenant whose collections it sees, the key's
model allow-list, and the rate-limit decisions whose ``x-ratelimit-*`` headers go on its response.

On the model routes (``METERED``) the requests limits are counted by the route, together with the
tokens limits and the budget reservation, once the prompt is read (``server/metering.py``): one
Redis round trip for all of them. A model request that ends before that (a 400, a 403) is counted
when its response starts.

Open paths: ``/health/*``, the API docs (``/docs``, ``/redoc``, ``/openapi.json``: the route table,
no data) and ``/metrics`` when ``auth.metrics`` is ``open``. ``/admin/*`` and a protected
``/metrics`` need an admin key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragline.access import AccessControl, AccessError, InvalidKey, Principal, RateDecision
from ragline.access.ratelimit import Check
from ragline.gateway import codec
from ragline.server.protocol import error_body
from ragline.state.base import StateError
from ragline.store.base import StoreError

log = logging.getLogger("ragline.server.access")

SCOPE_KEY = "ragline.access"
_OPEN = frozenset(
    {"/health/live", "/health/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
METERED = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/async/chat/completions"}
)
"""POST routes whose requests limits are counted with their tokens (``Meter.begin``)."""
_TYPES = {401: "invalid_request_error", 403: "permission_error", 400: "invalid_request_error"}


def access_error_type(e: AccessError) -> str:
    """The OpenAI error type of a refusal."""
    found = _TYPES.get(e.status_code)
    if found is not None:
        return found
    return "insufficient_quota" if e.code == "insufficient_quota" else "rate_limit_error"


@dataclass(slots=True)
class RequestAccess:
    """What access control decided for one request."""

    principal: Principal
    ip: str | None
    requests: RateDecision
    tokens: RateDecision | None = None
    """The tokens limits' decision, set by a model route."""
    pending: tuple[Check, ...] = ()
    """Requests limits not counted yet: a model route counts them with its tokens."""

    def rate_headers(self) -> list[tuple[bytes, bytes]]:
        out = self.requests.headers()
        if self.tokens is not None:
            out.update(self.tokens.headers())
        return [(k.encode(), v.encode()) for k, v in out.items() if k != "retry-after"]


def request_access(scope: Scope) -> RequestAccess | None:
    """The request's access decision (None outside the middleware: an app built without it)."""
    found: RequestAccess | None = scope.get(SCOPE_KEY)
    return found


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request presents, or None; InvalidKey for an ``Authorization`` that is not Bearer."""
    bearer: bytes | None = None
    api_key: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            bearer = value
        elif name == b"x-api-key":
            api_key = value
    if bearer is not None:
        scheme, _, credential = bearer.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not credential.strip():
            raise InvalidKey("Authorization must be 'Bearer <API key>'.", "malformed")
        return credential.strip().decode("latin-1")
    if api_key is not None and api_key.strip():
        return api_key.strip().decode("latin-1")
    return None


def _error_response(
    status: int, message: str, type_: str, code: str | None, headers: dict[str, str]
) -> tuple[Message, Message]:
    body = codec.dumps(error_body(message, type_, None, code))
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
    return (
        {"type": "http.response.start", "status": status, "headers": raw},
        {"type": "http.response.body", "body": body},
    )


class AccessMiddleware:
    def __init__(self, app: ASGIApp, access: Callable[[], AccessControl | None], metrics_open: bool) -> None:
        self.app = app
        self._access = access
        self._metrics_open = metrics_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        access = self._access()
        if access is None or path in _OPEN or path.startswith("/health/"):
            await self.app(scope, receive, send)
            return
        is_metrics = path == "/metrics"
        if is_metrics and (self._metrics_open or not access.required):
            await self.app(scope, receive, send)
            return
        if not access.started:  # served before the app's startup ran (or after its shutdown)
            start, body = _error_response(
                503,
                "The server is starting; retry shortly.",
                "service_unavailable",
                None,
                {"retry-after": "1"},
            )
            await send(start)
            await send(body)
            return
        client = scope.get("client")
        ip = client[0] if client else None
        pending: tuple[Check, ...] = ()
        try:
            presented = presented_key(scope["headers"]) if access.required else None
            if path in METERED and scope["method"] == "POST":
                principal = await access.identify(presented, ip)
                pending = tuple(access.limiter.checks(principal, ip, tokens=False))
                decision = RateDecision(True)
            else:
                principal, decision = await access.admit(
                    presented, ip, admin=is_metrics or path.startswith("/admin/") or path == "/admin"
                )
        except AccessError as e:
            start, body = _error_response(e.status_code, str(e), access_error_type(e), e.code, e.headers)
            await send(start)
            await send(body)
            return
        except (StoreError, StateError) as e:
            log.error("access control cannot reach its store or shared state: %s", e)
            start, body = _error_response(
                503,
                "Access control is unavailable (its record store or shared state cannot be reached); "
                "retry shortly.",
                "service_unavailable",
                "store_unavailable",
                {"retry-after": "5"},
            )
            await send(start)
            await send(body)
            return
        ra = RequestAccess(principal, ip, decision, pending=pending)
        scope[SCOPE_KEY] = ra
        await self.app(scope, receive, _with_headers(send, ra, access))


def _with_headers(send: Send, ra: RequestAccess, access: AccessControl) -> Send:
    """``send`` that puts the request's ``x-ratelimit-*`` headers on its response (and counts its
    requests limits first if its route did not)."""

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            if ra.pending:
                checks, ra.pending = ra.pending, ()
                try:
                    ra.requests = await access.limiter.hit(checks)
                except Exception as e:  # the response is made: a lost count, not a failed request
                    log.warning("could not count a request against the requests limits: %s", e)
            extra = ra.rate_headers()
            if extra:
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sender
