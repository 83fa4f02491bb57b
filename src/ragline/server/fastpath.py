"""Gateway chat completions without FastAPI's per-request machinery, as a pure ASGI middleware.

A request for a gateway model is a pass-through: validate, hand the body to the router,
send the upstream's answer back. Through FastAPI that costs more than the proxying itself
(route matching, dependency solving, the request object, exception middlewares, response
encoding); ``bench/gateway_overhead.py`` measured it. This middleware takes
``POST /v1/chat/completions`` for gateway model names and does only what the route would:

- the body is validated with the same model (``ChatCompletionRequest``), then served by the
  same service calls and response builders as the FastAPI route (``app.py``);
- anything else (another path, the embedded or a ``rag/`` model, a body that is not a JSON
  object of a valid request, a non-JSON content type, ``rag`` options) goes on to FastAPI
  with the body replayed, so every error and every other route answers exactly as before.

It sits inside the metrics and body-limit middlewares: both still apply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragline.gateway import Router, codec
from ragline.server.disconnect import ClientDisconnected, cancel_on_disconnect
from ragline.server.protocol import ChatCompletionRequest

PATH = "/v1/chat/completions"

#: Serves a validated request: (request, scope, receive) -> the response (errors already
#: rendered); ``receive`` tells a non-streamed call that its client went away.
Handler = Callable[[ChatCompletionRequest, Scope, Receive], Awaitable[Response]]


class GatewayFastPath:
    def __init__(self, app: ASGIApp, gateway: Callable[[], Router | None], handler: Handler) -> None:
        self.app = app
        self._gateway = gateway
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        gateway = self._gateway()
        if gateway is None or not _json_content(scope):
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        req = _gateway_request(gateway, body) if not more else None
        if req is None:
            await self.app(scope, _replay(body, more, receive), send)
            return
        response = await self._handler(req, scope, receive)
        if isinstance(response, StreamingResponse):
            await _stream(response, receive, send)
        else:
            await response(scope, receive, send)


def _json_content(scope: Scope) -> bool:
    """True for ``application/json`` (parameters allowed), the only type the fast path parses itself."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body; ``more`` is True when the client went away (or the stream ended) mid-body."""
    message = await receive()
    if message["type"] != "http.request":
        return b"", True
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body, False
    parts = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), True
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts), False


def _gateway_request(gateway: Router, body: bytes) -> ChatCompletionRequest | None:
    """The validated request when it is one the fast path serves, else None (FastAPI answers it)."""
    try:
        data: Any = codec.loads(body)
    except (ValueError, RecursionError):  # not JSON, or JSON nobody could pass on: FastAPI's 400
        return None
    if not isinstance(data, dict):
        return None
    model = data.get("model")
    if not isinstance(model, str) or not gateway.handles(model) or data.get("rag") is not None:
        return None
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError:
        return None


async def _stream(response: StreamingResponse, receive: Receive, send: Send) -> None:
    """Send a streaming response, as Starlette's ``StreamingResponse`` does, on plain asyncio.

    The same contract: the body as it is produced, and a client that goes away (``http.disconnect``)
    stops the stream, which closes the upstream's. Starlette runs the body and the disconnect
    watch in an anyio task group (cancel scopes, a named task per stream); here the watch is one
    asyncio task that cancels this one, and the cancellation is taken back once handled.
    """
    body = response.body_iterator

    async def send_all() -> None:
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
        )
        async for chunk in body:
            data = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(response.charset)
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    try:
        await cancel_on_disconnect(receive, send_all())
    except ClientDisconnected:
        pass  # the client went away: the stream (and the upstream's) stops here
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body out once more, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if more:  # the body did not end: let the app see the same disconnect
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
