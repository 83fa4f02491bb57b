"""Serving glue for gateway models: a validated request in, the Router's answer out, errors mapped.

The request body goes to the upstream as the client sent it (tools, tool_choice,
response_format, seed, stop, ... and unknown fields alike); only ragline's own ``rag``
and ``cache`` extensions are dropped, and the router rewrites ``model``. Gateway errors become API errors
here, in one place:

- every deployment down, open or failed -> 503 ``service_unavailable``
- the request's deadline passed -> 504
- an upstream's 4xx (429 included) -> the same status, with the upstream's message, except
  401/403/407 (the gateway's own credentials were refused) -> 502 naming the deployment only
- a stream broken after tokens were sent -> an error event at the end of the stream
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

from ragline.gateway import (
    DeadlineExceeded,
    GatewayError,
    NoDeploymentAvailable,
    Router,
    StreamInterrupted,
    UpstreamStatusError,
)
from ragline.server.errors import APIError, BadRequest, GatewayTimeout, ServiceUnavailable, UpstreamFailed
from ragline.server.protocol import ChatCompletionRequest

_NO_HEADERS: Mapping[str, str] = {}
#: Upstream statuses that say the gateway's credentials were refused.
_CREDENTIALS = frozenset({401, 403, 407})


def request_body(req: ChatCompletionRequest) -> dict[str, Any]:
    if req.rag is not None:
        raise BadRequest(
            "rag options apply to the embedded model and rag/<collection> models, not to gateway models",
            param="rag",
        )
    return req.model_dump(exclude_unset=True, exclude={"rag", "cache"})


async def complete(
    router: Router, req: ChatCompletionRequest, headers: Mapping[str, str] | None
) -> dict[str, Any]:
    body = request_body(req)
    try:
        return await router.complete(body, headers or _NO_HEADERS)
    except GatewayError as e:
        raise api_error(e) from e


async def stream(
    router: Router, req: ChatCompletionRequest, headers: Mapping[str, str] | None
) -> AsyncGenerator[dict[str, Any], None]:
    body = request_body(req)
    chunks = router.stream(body, headers or _NO_HEADERS)
    try:
        async for chunk in chunks:
            yield chunk
    except GatewayError as e:
        raise api_error(e) from e
    finally:
        await chunks.aclose()


def api_error(e: GatewayError) -> APIError:
    """The client's error for a gateway error: the deployment and the kind of failure, never the
    upstream's address or the transport's words (those are in the log)."""
    if isinstance(e, UpstreamStatusError):
        if e.status in _CREDENTIALS or e.status >= 500:
            # the gateway's own key was refused, or the upstream broke: not the client's to read
            return UpstreamFailed(502, str(e), type_="server_error", code="upstream_error")
        message = e.message
        if e.status == 429 and e.retry_after is not None:
            message = f"{message} (retry after {e.retry_after:g} s)"
        type_ = "rate_limit_error" if e.status == 429 and e.type == "invalid_request_error" else e.type
        return UpstreamFailed(e.status, message, type_=type_, param=e.param, code=e.code)
    if isinstance(e, DeadlineExceeded):
        return GatewayTimeout(str(e), code="deadline_exceeded")
    if isinstance(e, NoDeploymentAvailable):
        return ServiceUnavailable(str(e), code="no_deployment_available")
    if isinstance(e, StreamInterrupted):
        return UpstreamFailed(502, str(e), type_="server_error", code="upstream_stream_interrupted")
    return UpstreamFailed(502, str(e), type_="server_error", code="upstream_error")
