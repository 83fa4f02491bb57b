"""The ASGI app: routes validate, call a service, shape the response. Nothing else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragline.engine import Engine
from ragline.errors import CollectionNotFound, ConfigError, DocumentNotFound, InvalidFilter, RaglineError
from ragline.server.errors import APIError, PayloadTooLarge
from ragline.server.jobs import JobStore
from ragline.server.knowledge import build_router
from ragline.server.protocol import ChatCompletionRequest, EmbeddingRequest, error_body
from ragline.server.serving import ChatService, EmbeddingService

EMBEDDING_ALIASES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class State:
    def __init__(self, engine: Engine, local_model: str) -> None:
        self.engine = engine
        self.chat = ChatService(engine, local_model)
        self.embeddings = EmbeddingService(engine, set())
        self.jobs = JobStore()
        self.ready = False


def _error(
    status: int, message: str, type_: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def create_app(
    engine: Engine, *, local_model: str = "local", max_body_bytes: int = 8 * 1024 * 1024
) -> FastAPI:
    state = State(engine, local_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load the models off the event loop; /health/ready says when they are in.
        def load() -> None:
            emb = engine.embedder
            state.embeddings.model_names = {emb.name, *EMBEDDING_ALIASES}
            _ = engine.llm
            state.ready = True

        loader = asyncio.create_task(asyncio.to_thread(load))
        yield
        if not loader.done():
            loader.cancel()
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="ragline", version="0.1.0", lifespan=lifespan)
    app.state.ragline = state

    # -- errors: always OpenAI-shaped ---------------------------------------------------

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return _error(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return _error(400, "Request body is not valid JSON", "invalid_request_error")
        msg = "; ".join(
            f"{'.'.join(str(x) for x in err.get('loc', ()) if x != 'body') or 'body'}: {err.get('msg')}"
            for err in errs[:5]
        )
        return _error(400, msg, "invalid_request_error", ".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error(e.status_code, str(e.detail), type_)

    @app.exception_handler(RaglineError)
    async def _ragline(_: Request, e: RaglineError) -> JSONResponse:
        if isinstance(e, CollectionNotFound | DocumentNotFound):
            return _error(404, str(e), "not_found_error")
        if isinstance(e, InvalidFilter | ConfigError):
            return _error(400, str(e), "invalid_request_error")
        return _error(500, str(e), "server_error")

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > max_body_bytes
            except ValueError:
                return _error(400, "invalid Content-Length", "invalid_request_error")
            if too_big:
                e = PayloadTooLarge(f"request body exceeds {max_body_bytes} bytes")
                return _error(e.status, e.message, e.type)
        return await call_next(request)

    # -- health -------------------------------------------------------------------------

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> Response:
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready"})

    # -- OpenAI-compatible ----------------------------------------------------------------

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = await asyncio.to_thread(state.chat.models)
        emb = sorted(state.embeddings.model_names - EMBEDDING_ALIASES)
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "ragline"} for n in [*names, *emb]]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest) -> Response | dict[str, Any]:
        if not req.stream:
            return await state.chat.complete(req)
        gen = state.chat.stream(req)
        first = await anext(gen)  # errors before the first chunk become proper HTTP errors

        async def sse() -> AsyncIterator[bytes]:
            yield _sse(first)
            try:
                async for chunk in gen:
                    yield _sse(chunk)
            except APIError as e:
                yield _sse(error_body(e.message, e.type, e.param, e.code))
            except RaglineError as e:
                yield _sse(error_body(str(e), "server_error"))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> dict[str, Any]:
        return await state.embeddings.embed(req)

    app.include_router(build_router(engine, state.jobs, max_body_bytes))
    return app


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
