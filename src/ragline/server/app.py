"""The ASGI app: routes validate, call a service, shape the response. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import Receive, Scope

from ragline.access import AccessControl, AccessError
from ragline.answer.agent import Decision
from ragline.cache.base import CacheStore, CacheUnavailable
from ragline.cache.memory import MemoryCacheStore
from ragline.cache.service import CachePlan, ResponseCache
from ragline.collection import TENANT_SEP
from ragline.engine import Engine
from ragline.errors import (
    CollectionBusy,
    CollectionNotFound,
    CollectionUnavailable,
    ConfigError,
    ContextLengthExceeded,
    DocumentNotFound,
    InvalidFilter,
    InvalidRequest,
    LimitExceeded,
    RaglineError,
)
from ragline.gateway import build_router as build_gateway
from ragline.gateway import codec
from ragline.gateway.rules import CHARS_PER_TOKEN
from ragline.observability import metrics
from ragline.observability.context import RequestStats, activate, current
from ragline.observability.metrics import REGISTRY
from ragline.server import model_threads
from ragline.server.access_mw import AccessMiddleware, RequestAccess, access_error_type, request_access
from ragline.server.admin_routes import build_admin_router
from ragline.server.body_limit import BodyLimitMiddleware
from ragline.server.caching import (
    HEADER,
    CachedChat,
    StreamCollector,
    hit_body,
    replayed,
    sources_of,
    with_cache_info,
)
from ragline.server.caller import Caller, caller_of
from ragline.server.completions import CompletionService
from ragline.server.disconnect import CLIENT_CLOSED_REQUEST, ClientDisconnected, cancel_on_disconnect
from ragline.server.errors import APIError, BadRequest, ModelNotFound, PayloadTooLarge, TooManyRequests
from ragline.server.fastpath import GatewayFastPath
from ragline.server.jobs import JobRefused, JobStore
from ragline.server.knowledge import build_router
from ragline.server.metering import Meter, Ticket, estimate_tokens
from ragline.server.metrics_mw import MetricsMiddleware, observe_usage
from ragline.server.protocol import (
    ApprovalRequest,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    StreamOptions,
    ToolOutputsRequest,
    error_body,
)
from ragline.server.runs import RunStore
from ragline.server.serving import RAG_PREFIX, ChatService, EmbeddingService
from ragline.server.tenancy import Tenancy
from ragline.state.base import SharedState, StateError
from ragline.store.base import AlreadyExists, StoreError
from ragline.store.base import NotFound as StoreNotFound
from ragline.types import Answer

EMBEDDING_ALIASES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
log = logging.getLogger("ragline.server")


class State:
    def __init__(self, engine: Engine, local_model: str) -> None:
        self.engine = engine
        self.access = AccessControl(engine.settings)
        # the gateway's model names, routed to upstream (and local) deployments; its breakers and
        # passive health shared with the other replicas through the access layer's shared state
        self.gateway = build_gateway(
            engine.settings,
            lambda: engine.llm,
            run_in_thread=lambda fn: model_threads.run_model(engine, fn),
            state=self.access.state,
        )
        runs = RunStore(self.access.state, engine.settings.answer.agent.run_ttl_s)
        self.chat = ChatService(engine, local_model, self.gateway, runs)
        s = engine.settings.server
        self.embeddings = EmbeddingService(
            engine,
            set(),
            max_batch_size=s.embedding_batch_max_size,
            max_wait_ms=s.embedding_batch_max_wait_ms,
        )
        self.completions = CompletionService(engine, local_model)
        self.jobs = JobStore(
            max_running_ingest=s.max_running_ingest_jobs,
            max_running_async=s.max_running_async_jobs,
            max_queued=s.max_queued_jobs,
            max_per_owner=s.max_jobs_per_key,
            max_result_bytes=s.max_job_bytes,
            timeout_s=s.job_timeout_s,
            ttl_s=s.job_ttl_s,
            keep=s.max_finished_jobs,
            keep_bytes=s.max_finished_job_bytes,
        )
        # Async jobs on the local model take at most n_parallel - 1 of its slots: one is always left
        # to synchronous requests, however many jobs are queued (with one slot, jobs and requests share it).
        self.async_local_slots = asyncio.Semaphore(max(1, engine.settings.llm.n_parallel - 1))
        self.meter = Meter(self.access, self.deployments_of)
        self.caller = caller_of(engine)
        self.cache = _build_cache(engine, self.chat, self.access.state)
        self.ready = False
        self.load_error: str | None = None
        """Why the models failed to load at start-up (then the server never gets ready)."""

    def deployments_of(self, model: str) -> tuple[str, ...]:
        """The deployments that may serve ``model`` (their prices bound what it can cost)."""
        gw = self.gateway
        if gw is not None and gw.handles(model):
            return gw.deployment_names(model)
        return ("local",)


def _build_cache(engine: Engine, chat: ChatService, shared: SharedState) -> CachedChat | None:
    """The response cache the settings ask for (in this process, or in the shared state's Redis), or
    None when it is off."""
    settings = engine.settings.cache
    if not settings.enabled:
        return None

    async def embed(question: str) -> Any:
        return (await asyncio.to_thread(engine.embedder.embed_queries, [question]))[0]

    async def versions(collection: str, doc_ids: Sequence[str]) -> dict[str, str]:
        return await asyncio.to_thread(engine.versions, collection, doc_ids)

    kind = settings.store
    if kind == "auto":
        kind = "redis" if engine.settings.state.url is not None else "memory"
    store: CacheStore
    if kind == "redis":
        from ragline.cache.redis import RedisCacheStore
        from ragline.state.redis import RedisState

        if not isinstance(shared, RedisState):
            raise ConfigError("cache.store: redis needs state.url (the Redis server the cache shares)")
        store = RedisCacheStore(
            shared,
            max_entries=settings.max_entries,
            dim=lambda: engine.embedder.dim,
            on_evict=metrics.CACHE_EVICTIONS.inc,
        )
    else:
        store = MemoryCacheStore(
            max_entries=settings.max_entries,
            dim=lambda: engine.embedder.dim,
            on_evict=metrics.CACHE_EVICTIONS.inc,
        )
    cache = ResponseCache(settings, store, embed=embed, versions=versions)
    return CachedChat(cache, chat, engine.settings.llm.temperature)


def _error(
    status: int, message: str, type_: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    # a message may quote the client's input: unpaired surrogates in it must not break the encoding
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if param is not None:
        param = param.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def create_app(
    engine: Engine, *, local_model: str = "local", max_body_bytes: int = 8 * 1024 * 1024
) -> FastAPI:
    state = State(engine, local_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load the models off the event loop; /health/ready says when they are in, or why not.
        def load() -> None:
            try:
                emb = engine.embedder
                state.embeddings.model_names = {emb.name, *EMBEDDING_ALIASES}
                _ = engine.llm
            except Exception as e:  # reported by /health/ready and logged once; never re-raised
                state.load_error = str(e) if isinstance(e, RaglineError) else f"{type(e).__name__}: {e}"
                log.error("the models failed to load, the server will not get ready: %s", state.load_error)
                return
            # Everything allocated so far lives as long as the process: keep it out of the cyclic
            # collector's full passes (~100k objects, tens of ms per gen-2 pass on a busy core).
            gc.freeze()
            state.ready = True

        await state.access.start()  # the record store (migrated) and shared state, before any request
        if state.cache is not None:
            await state.cache.cache.backend.start()  # a shared cache: after the state is open
        loader = asyncio.create_task(asyncio.to_thread(load))
        await state.gateway.start()
        yield
        await state.gateway.aclose()
        await asyncio.to_thread(state.jobs.close)  # cancel the jobs; running ingestions stop at a batch
        if not loader.done():
            loader.cancel()
        await state.embeddings.batcher.close()
        await state.meter.drain()
        await state.access.close()  # drains the spend writer: no settlement is lost
        if state.cache is not None:
            await state.cache.cache.close()
        model_threads.shutdown(engine)
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="ragline", version="0.1.0", lifespan=lifespan)
    app.state.ragline = state

    # -- errors: always OpenAI-shaped ---------------------------------------------------

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        resp = _error(e.status, e.message, e.type, e.param, e.code)
        if isinstance(e, TooManyRequests):
            resp.headers["Retry-After"] = str(max(1, round(e.retry_after)))
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return _error(400, "Request body is not valid JSON", "invalid_request_error")
        by_field: dict[str, str] = {}  # one message per field: a union reports each branch it tried
        for err in errs:
            by_field.setdefault(_field(err.get("loc", ())) or "body", str(err.get("msg")))
        msg = "; ".join(f"{k}: {v}" for k, v in list(by_field.items())[:5])
        return _error(400, msg, "invalid_request_error", _field(first.get("loc", ())) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error(e.status_code, str(e.detail), type_)

    @app.exception_handler(RaglineError)
    async def _ragline(_: Request, e: RaglineError) -> JSONResponse:
        return _ragline_error(e)

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, e: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it: for metrics and the log

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        # a bug: still an OpenAI-shaped body (the traceback goes to the server log)
        return _error(500, "internal server error", "server_error")

    # pure ASGI middleware (the last added runs first): metrics see every request, 401s and 413s included;
    # gateway chat completions are served innermost, past FastAPI's routing (see fastpath.py);
    # access control runs before any body is read
    app.add_middleware(
        GatewayFastPath, gateway=lambda: state.gateway, handler=lambda r, sc, rcv: serve_chat(r, sc, rcv)
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(
        AccessMiddleware, access=lambda: state.access, metrics_open=engine.settings.auth.metrics == "open"
    )
    app.add_middleware(MetricsMiddleware, templates=lambda: _route_templates(app))

    # -- health -------------------------------------------------------------------------

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> Response:
        if not state.ready:
            if state.load_error is not None:
                # health is open to anyone: the reason (it names files) is in the server's log only
                reason = "the models failed to load; the server log says why"
                return JSONResponse({"status": "failed", "reason": reason}, status_code=503)
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready"})

    # -- OpenAI-compatible ----------------------------------------------------------------

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        caller = state.caller(request.scope)
        names = await asyncio.to_thread(state.chat.models, caller.tenancy)
        emb = sorted(state.embeddings.model_names - EMBEDDING_ALIASES)
        p = caller.access.principal if caller.access is not None else None
        data = [
            {"id": n, "object": "model", "created": 0, "owned_by": "ragline"}
            for n in [*names, *emb]
            if p is None or p.may_use(n)
        ]
        return {"object": "list", "data": data}

    # -- metering: the key's models, the tokens limits and budgets around each model call ----------

    def chat_models(req: ChatCompletionRequest) -> tuple[str, ...]:
        """The model names a chat request uses (``extra_body.rag`` uses a collection too)."""
        if req.rag is not None and not req.model.startswith(RAG_PREFIX):
            return (req.model, RAG_PREFIX + (req.rag.collection or engine.settings.default_collection))
        return (req.model,)

    def completion_cap(model: str) -> int | None:
        group = engine.settings.gateway.models.get(model)
        if group is not None:
            return group.max_tokens or engine.settings.gateway.max_tokens
        routed = state.gateway is not None and state.gateway.handles(model)
        return None if routed else engine.settings.llm.n_ctx

    def reserved_tokens(req: ChatCompletionRequest | CompletionRequest, ra: RequestAccess | None) -> int:
        """The completion tokens to reserve; a budgeted request without max_tokens is given some."""
        asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
        choices = req.n  # a gateway model's n choices each cost up to max_tokens
        steps = 0  # an agentic run's decisions are generations too
        rag = isinstance(req, ChatCompletionRequest) and (
            req.model.startswith(RAG_PREFIX) or req.rag is not None
        )
        if rag and state.chat.rag_mode(cast(ChatCompletionRequest, req)) == "agentic":
            agent = engine.settings.answer.agent
            steps = agent.max_steps * agent.step_max_tokens
        if asked:
            return asked * choices + steps
        cap = completion_cap(req.model)
        n = min(state.meter.assumed_max_tokens, cap) if cap else state.meter.assumed_max_tokens
        if state.meter.needs_max_tokens(ra):
            req.max_tokens = n  # passed on: the call cannot cost more than was reserved
        return n * choices + steps

    async def begin_chat(req: ChatCompletionRequest, ra: RequestAccess | None) -> Ticket | None:
        if ra is None:
            return None
        state.meter.check_model(ra, *chat_models(req))
        prompt = estimate_tokens(sum(len(m.text()) for m in req.messages), len(req.messages))
        return await state.meter.begin(ra, req.model, prompt, reserved_tokens(req, ra))

    def settle(ticket: Ticket | None, usage: Any, stats: RequestStats | None) -> None:
        if ticket is None:
            return
        if isinstance(usage, dict):
            prompt, completion = (
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
            )
        elif stats is not None:
            prompt, completion = stats.prompt_tokens, stats.completion_tokens
        else:
            prompt = completion = 0
        deployment = stats.deployment if stats is not None and stats.deployment else "local"
        state.meter.finish(ticket, deployment=deployment, prompt_tokens=prompt, completion_tokens=completion)

    async def metered(ticket: Ticket | None, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            body = await call
        except BaseException:
            state.meter.release(ticket)
            raise
        settle(ticket, body.get("usage"), current())
        return body

    # -- OpenAI-compatible model calls --------------------------------------------------------------

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest, request: Request) -> Response:
        return await chat_response(req, request.scope, request.receive)

    async def chat_response(req: ChatCompletionRequest, scope: Scope, receive: Receive) -> Response:
        caller = state.caller(scope)
        headers = Headers(scope=scope)
        plan = state.cache.plan(req, caller.tenancy, headers) if state.cache is not None else None
        if plan is not None:
            return await cached_chat(req, plan, caller, headers, receive)
        ticket = await begin_chat(req, caller.access)
        if not req.stream:
            # a Response, not a dict: FastAPI's jsonable_encoder walk was a quarter of a proxied request's CPU
            call = _observed(req.model, state.chat.complete(req, headers, caller.tenancy))
            return _json(await cancel_on_disconnect(receive, metered(ticket, call)))
        wants_usage = _force_usage(req)
        gen = state.chat.stream(req, headers, caller.tenancy)
        return await _streaming(req.model, gen, wants_usage, ticket, state.meter, settle)

    async def cached_chat(
        req: ChatCompletionRequest, plan: CachePlan, caller: Caller, headers: Headers, receive: Receive
    ) -> Response:
        """A cacheable chat: answered from the cache when it holds the answer, else answered and kept."""
        cached = state.cache
        assert cached is not None
        state.meter.check_model(caller.access, *chat_models(req))  # a model the key may not use, never
        found = await cached.cache.lookup(plan)
        marker = {HEADER: found.status}
        if found.entry is not None:
            # counted against the request limits like any request; nothing reserved, nothing spent
            ticket = await state.meter.begin(caller.access, req.model, 0, 0)
            state.meter.finish(ticket, deployment="cache", prompt_tokens=0, completion_tokens=0, cached=True)
            stats = current()
            if stats is not None:
                stats.model = req.model
            body = hit_body(found)
            if not req.stream:
                return _json(body, marker)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await _streaming(req.model, replayed(body, include_usage), True, headers=marker)
        ticket = await begin_chat(req, caller.access)
        sources: dict[str, str] = {}
        retrieved: list[str] = []

        def on_answer(answer: Answer) -> None:
            sources.update(sources_of(answer))
            retrieved.extend(h.chunk_id for h in answer.sources)

        started = time.perf_counter()

        async def keep(body: dict[str, Any]) -> None:
            stats = current()
            deployment = stats.deployment if stats is not None and stats.deployment else "local"
            usage = body.get("usage") or {}
            cost = state.access.prices.cost_nano(
                req.model,
                deployment,
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
            )
            await cached.cache.store(
                plan,
                body,
                sources=sources,
                latency_s=time.perf_counter() - started,
                cost_nano=cost,
                vector=found.vector,
                retrieved=retrieved,
            )

        if not req.stream:
            call = _observed(
                req.model, state.chat.complete(req, headers, caller.tenancy, on_answer, found.vector)
            )
            body = await cancel_on_disconnect(receive, metered(ticket, call))
            await keep(body)
            return _json(with_cache_info(body, found), marker)
        wants_usage = _force_usage(req)
        collector = StreamCollector(state.chat.rag_mode(req) if plan.collection is not None else None)

        async def collected() -> AsyncIterator[dict[str, Any]]:
            gen = state.chat.stream(req, headers, caller.tenancy, on_answer, found.vector)
            try:
                async for part in gen:
                    collector.feed(part)
                    yield part
            finally:
                await cast(AsyncGenerator[dict[str, Any], None], gen).aclose()
            whole = collector.body()
            if whole is not None:
                await keep(whole)

        return await _streaming(
            req.model, collected(), wants_usage, ticket, state.meter, settle, headers=marker
        )

    async def serve_chat(req: ChatCompletionRequest, scope: Scope, receive: Receive) -> Response:
        """The route's work for the fast path, errors shaped as the exception handlers shape them."""
        try:
            return await chat_response(req, scope, receive)
        except APIError as e:
            return _error(e.status, e.message, e.type, e.param, e.code)
        except RaglineError as e:
            return _ragline_error(e)
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> Response | dict[str, Any]:
        ra = request_access(request.scope)
        ticket: Ticket | None = None
        if ra is not None:
            state.meter.check_model(ra, req.model)
            prompt = estimate_tokens(_chars(req.prompt))
            ticket = await state.meter.begin(ra, req.model, prompt, reserved_tokens(req, ra))
        if not req.stream:
            call = _observed(req.model, state.completions.complete(req))
            return await cancel_on_disconnect(request.receive, metered(ticket, call))
        wants_usage = _force_usage(req)
        return await _streaming(
            req.model, state.completions.stream(req), wants_usage, ticket, state.meter, settle
        )

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(req: EmbeddingRequest, request: Request) -> Response:
        ra = request_access(request.scope)
        ticket: Ticket | None = None
        if ra is not None:
            state.meter.check_model(ra, req.model)
            ticket = await state.meter.begin(ra, req.model, estimate_tokens(_chars(req.input)), 0)
        # the vectors are pre-encoded (off the event loop for large requests): a Response, not a dict
        call = _observed(req.model, state.embeddings.embed(req))
        return _json(await cancel_on_disconnect(request.receive, metered(ticket, call)))

    # -- agentic runs paused on a tool call -----------------------------------------------------------

    @app.get("/v1/rag/runs/{run_id}")
    async def get_run(run_id: str, request: Request) -> dict[str, Any]:
        """A run's status, its steps, and the call it waits on (``required_action``)."""
        run = await state.chat.load_run(run_id, state.caller(request.scope).tenancy)
        return run.public()

    async def resume(run_id: str, decision: Decision, request: Request) -> Response:
        caller = state.caller(request.scope)
        run = await state.chat.load_run(run_id, caller.tenancy)
        ticket = None
        if caller.access is not None:  # counted and budgeted like the chat request that started it
            state.meter.check_model(caller.access, run.model)
            n = state.meter.assumed_max_tokens
            ticket = await state.meter.begin(caller.access, run.model, 0, n)
        call = _observed(run.model, state.chat.resume(run_id, decision, caller.tenancy))
        return _json(await cancel_on_disconnect(request.receive, metered(ticket, call)))

    @app.post("/v1/rag/runs/{run_id}/approve", response_model=None)
    async def approve_run(run_id: str, body: ApprovalRequest, request: Request) -> Response:
        """Approve or reject the server tool call a run waits on; the run goes on (the next
        chat.completion: its answer, or the next call it waits on)."""
        decision = Decision(body.tool_call_id, approve=body.approve, reason=body.reason)
        return await resume(run_id, decision, request)

    @app.post("/v1/rag/runs/{run_id}/submit_tool_outputs", response_model=None)
    async def submit_tool_outputs(run_id: str, body: ToolOutputsRequest, request: Request) -> Response:
        """The output of the caller's tool call a run waits on; the run goes on."""
        out = body.tool_outputs[0]
        return await resume(run_id, Decision(out.tool_call_id, output=out.output), request)

    @app.post("/v1/async/chat/completions", status_code=202)
    async def async_chat(req: ChatCompletionRequest, request: Request) -> dict[str, Any]:
        """Submit a chat completion as a job; poll ``GET /v1/jobs/{id}``, its result is the completion."""
        limit = engine.settings.server.max_job_bytes
        if len(await request.body()) > limit:  # a job keeps its request until it runs
            raise PayloadTooLarge(f"an async job's body is limited to {limit} bytes (server.max_job_bytes)")
        if req.stream:
            raise BadRequest("async jobs do not stream; poll GET /v1/jobs/{id}", param="stream")
        caller = state.caller(request.scope)
        if req.model not in await asyncio.to_thread(state.chat.models, caller.tenancy):
            raise ModelNotFound(req.model)
        state.chat.check(req)  # the limits, before the job is accepted
        ticket = await begin_chat(req, caller.access)  # the budget is reserved now, settled by the job
        local = state.chat.uses_local_model(req)

        async def work() -> dict[str, Any]:
            stats = RequestStats()
            activate(stats)  # the job's own context: its tokens are counted like a request's
            async with state.async_local_slots if local else contextlib.nullcontext():
                body = await metered(ticket, state.chat.complete(req, tenancy=caller.tenancy))
            observe_usage(req.model, stats.deployment, body.get("usage"))
            return body

        try:
            job = state.jobs.submit_async("chat.completion", work, owner=caller.key_id, tenant=caller.tenant)
        except JobRefused as e:
            state.meter.release(ticket)
            raise TooManyRequests(e.message, retry_after=e.retry_after, code=e.code) from None
        return job.to_dict()

    app.include_router(build_router(engine, state.jobs, max_body_bytes))
    default_tenant = engine.settings.auth.default_tenant

    def stored_name(tenant: str | None, collection: str) -> str:
        return Tenancy(engine, tenant or default_tenant, default_tenant).stored(collection, "collection")

    cache = state.cache.cache if state.cache is not None else None
    app.include_router(build_admin_router(state.access, cache, stored_name))
    return app


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


_TENANT_PREFIX = re.compile(rf"(?<=')[a-z0-9][a-z0-9_.\-]{{0,62}}{TENANT_SEP}")


def _ragline_error(e: RaglineError) -> JSONResponse:
    if isinstance(e, AccessError):
        resp = _error(e.status_code, str(e), access_error_type(e), code=e.code)
        resp.headers.update(e.headers)
        return resp
    if isinstance(e, StoreNotFound):
        return _error(404, str(e), "not_found_error")
    if isinstance(e, AlreadyExists):
        return _error(409, str(e), "invalid_request_error", code="already_exists")
    if isinstance(e, StoreError):
        log.error("record store failed: %s", e)
        resp = _error(503, "the record store cannot be reached; retry shortly", "service_unavailable")
        resp.headers["Retry-After"] = "5"
        return resp
    if isinstance(e, CacheUnavailable):
        resp = _error(503, "the response cache cannot be reached; retry shortly", "service_unavailable")
        resp.headers["Retry-After"] = "5"
        return resp
    if isinstance(e, StateError):
        log.error("shared state failed: %s", e)
        resp = _error(
            503, "rate limits and budgets cannot be checked now; retry shortly", "service_unavailable"
        )
        resp.headers["Retry-After"] = "5"
        return resp
    # a tenant's collections are stored as <tenant>~<name>: its messages name them as the tenant does
    message = _TENANT_PREFIX.sub("", str(e))
    if isinstance(e, CollectionNotFound | DocumentNotFound):
        return _error(404, message, "not_found_error")
    if isinstance(e, ContextLengthExceeded):
        return _error(400, message, "invalid_request_error", code="context_length_exceeded")
    if isinstance(e, InvalidRequest):
        return _error(400, message, "invalid_request_error", e.param)
    if isinstance(e, InvalidFilter | ConfigError):
        return _error(400, message, "invalid_request_error")
    if isinstance(e, CollectionBusy):
        return _error(409, message, "invalid_request_error", code="collection_busy")
    if isinstance(e, LimitExceeded):
        return _error(403, message, "invalid_request_error", code="limit_exceeded")
    if isinstance(e, CollectionUnavailable):
        resp = _error(503, message, "service_unavailable", code="collection_unavailable")
        resp.headers["Retry-After"] = "5"
        return resp
    return _error(500, _internal(e), "server_error")


def _internal(e: BaseException) -> str:
    """The client's message for a failure inside the server: no paths, addresses or exception
    names (they go to the log)."""
    log.error("request failed: %s", e, exc_info=e)
    return "internal error: the server could not complete the request (see the server log)"


def _field(loc: Any) -> str:
    """``messages.0.content`` from pydantic's error location (no "body", no union branch tags)."""
    return ".".join(
        str(x)
        for x in loc
        if x != "body" and not (isinstance(x, str) and ("[" in x or "(" in x or x in _TYPE_TAGS))
    )


def _route_templates(app: FastAPI) -> list[str]:
    """Every path template the app serves (the metrics' route label set)."""
    paths = [r.path for r in app.routes if isinstance(r, Route)]  # top level, in or out of the schema
    with contextlib.suppress(Exception):  # metrics must never break serving
        paths.extend(app.openapi()["paths"])  # included routers, with their prefixes
    return paths


async def _observed(model: str, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Await a service call and label the request's metrics with its model and token usage."""
    stats = current()
    try:
        body = await call
    except BaseException:
        if stats is not None and stats.deployment:  # a model was called, so the name is a served one
            stats.model = model
        raise
    if stats is not None:
        stats.model = model
        usage = body.get("usage")
        if isinstance(usage, dict):
            stats.add_tokens(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    return body


def _chars(value: object) -> int:
    """The characters of a prompt or input given as text, token ids, or lists of either (a token id
    counts as a token's worth of characters)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return CHARS_PER_TOKEN


def _force_usage(req: ChatCompletionRequest | CompletionRequest) -> bool:
    """Ask the service for the usage chunk (for the token metrics); True if the client asked too."""
    wanted = bool(req.stream_options and req.stream_options.include_usage)
    if not wanted:
        req.stream_options = StreamOptions(include_usage=True)
    return wanted


def _has_text(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices")
    if not choices:
        return False
    c = choices[0]
    return bool(c.get("text") or (c.get("delta") or {}).get("content"))


async def _streaming(
    model: str,
    gen: AsyncIterator[dict[str, Any]],
    wants_usage: bool,
    ticket: Ticket | None = None,
    meter: Meter | None = None,
    settle: Callable[[Ticket | None, Any, RequestStats | None], None] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """SSE response for a chunk stream; errors before the first chunk become proper HTTP errors.

    A metered stream (``ticket``) is settled when it ends, from its usage chunk; a stream cut short
    before one (the client went away) is settled with a completion token per text chunk sent.
    """
    stats = current()
    try:
        first = await anext(gen)
    except BaseException:
        if stats is not None and stats.deployment:
            stats.model = model
        if meter is not None:
            meter.release(ticket)
        raise
    if stats is not None:
        stats.model = model
    seen: dict[str, Any] = {"usage": None, "chunks": 0}

    def encode(chunk: dict[str, Any]) -> bytes | None:
        usage = chunk.get("usage")
        if usage and not chunk.get("choices"):  # the usage chunk, last before [DONE]
            seen["usage"] = usage
            if stats is not None:
                stats.add_tokens(
                    int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                )
            if not wants_usage:
                return None
        elif _has_text(chunk):
            seen["chunks"] += 1
            if stats is not None and stats.first_token_at is None:
                stats.mark_first_token()
        return _sse(chunk)

    def settled() -> None:
        if settle is None or ticket is None:
            return
        usage = seen["usage"]
        if usage is None:
            prompt = stats.prompt_tokens if stats is not None else 0
            usage = {"prompt_tokens": prompt, "completion_tokens": seen["chunks"]}
        settle(ticket, usage, stats)

    async def sse() -> AsyncIterator[bytes]:
        try:
            data = encode(first)
            if data is not None:
                yield data
            try:
                async for chunk in gen:
                    data = encode(chunk)
                    if data is not None:
                        yield data
            except APIError as e:
                yield _sse(error_body(e.message, e.type, e.param, e.code))
            except RaglineError as e:
                yield _sse(error_body(_internal(e), "server_error"))
            yield b"data: [DONE]\n\n"
        finally:
            settled()

    return StreamingResponse(
        sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", **(headers or {})}
    )


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + codec.dumps(obj) + b"\n\n"


def _json(body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(codec.dumps(body), media_type="application/json", headers=headers)
