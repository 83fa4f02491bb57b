"""Request body size limit, as a pure ASGI middleware.

A declared ``Content-Length`` over the limit is refused before the body is read.
A body without one (chunked transfer) is counted as the application reads it and
refused as soon as it grows past the limit. Both answer 413 with an OpenAI-shaped
error body.
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragline.server.protocol import error_body


def _too_large(limit: int) -> str:
    return f"request body exceeds {limit} bytes (server.max_body_bytes)"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit.

    A FastAPI HTTPException on purpose: FastAPI re-raises it from body parsing
    (any other exception there becomes a 400), and the app's handler shapes it.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=_too_large(limit))


async def send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps(error_body(message, "invalid_request_error")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await send_error(send, 400, "invalid Content-Length")
                return
            if too_big:
                await send_error(
                    send, 413, f"request body exceeds {self.max_bytes} bytes (server.max_body_bytes)"
                )
                return
            # the HTTP server never hands the app more than the declared length
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:
            if started:
                raise
            await send_error(send, 413, str(e.detail))
