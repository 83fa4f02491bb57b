"""The serving layer: turns validated requests into engine/model calls and OpenAI-shaped results.

Testable without HTTP. Every model call runs in a worker thread (llama.cpp and
onnxruntime release the GIL), never on the event loop; streaming bridges the
model's token callback to an asyncio queue, and a non-streamed generation whose
caller went away stops at its next token (``answer/tokens.py``).

Every request is bounded before it costs work (``server.*`` limits, see ``check``
and ``EmbeddingService.embed``): a request past a limit is refused with a 400 that
names the setting.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import orjson

from ragline.answer import agent as agentic
from ragline.answer import tools
from ragline.answer.llm import Completion, Piece
from ragline.answer.tokens import DONE, TokenBridge, stop_when_abandoned
from ragline.engine import Engine
from ragline.errors import CollectionNotFound, InvalidRequest, RaglineError
from ragline.gateway import Router
from ragline.gateway.local import chat_choice, choice_seed, choices_usage, stream_choices, unsupported
from ragline.gateway.rules import CHARS_PER_TOKEN
from ragline.observability.context import current, upstream
from ragline.server import gateway as routed
from ragline.server.batching import DynamicBatcher
from ragline.server.chat_checks import check_chat
from ragline.server.errors import BadRequest, ContextTooLong, ModelNotFound, NotFound
from ragline.server.model_threads import run_model
from ragline.server.protocol import ChatCompletionRequest, EmbeddingRequest
from ragline.server.runs import RunStore
from ragline.server.tenancy import Tenancy
from ragline.types import Answer

RAG_PREFIX = "rag/"


def _now() -> int:
    return int(time.time())


def _chat_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def check_max_tokens(engine: Engine, model: str, max_tokens: int | None) -> None:
    """A completion budget the embedded model can hold: at most its context (``llm.n_ctx``)."""
    n_ctx = engine.settings.llm.n_ctx
    if max_tokens is not None and max_tokens > n_ctx:
        raise BadRequest(
            f"max_tokens {max_tokens} is more than the context of model '{model}' "
            f"({n_ctx} tokens, llm.n_ctx)",
            param="max_tokens",
            code="max_tokens_too_large",
        )


def check_filters(engine: Engine, filters: list[str] | None, param: str) -> None:
    limit = engine.settings.server.max_filters
    if filters is not None and len(filters) > limit:
        raise BadRequest(
            f"{len(filters)} filters; at most {limit} per request (server.max_filters)",
            param=param,
            code="too_many_filters",
        )


def check_query(engine: Engine, query: str, param: str) -> None:
    limit = engine.settings.server.max_query_chars
    if len(query) > limit:
        raise BadRequest(
            f"the query has {len(query)} characters; at most {limit} (server.max_query_chars)",
            param=param,
            code="query_too_long",
        )


def _map_llm_error(e: RaglineError) -> Exception:
    msg = str(e)
    if isinstance(e, InvalidRequest) and e.param is not None:
        return BadRequest(msg, param=e.param)
    if "context" in msg.lower() or "exceed" in msg.lower():
        return ContextTooLong(msg)
    return e


class ChatService:
    def __init__(
        self,
        engine: Engine,
        local_model: str,
        gateway: Router | None = None,
        runs: RunStore | None = None,
    ) -> None:
        self._engine = engine
        self.local_model = local_model
        #: Routes the gateway's model names (non-RAG chat) to their deployments.
        self.gateway = gateway
        #: Paused agentic runs (None: agentic answers cannot pause, their tools are refused).
        self.runs = runs

    def models(self, tenancy: Tenancy | None = None) -> list[str]:
        """Every model name: the local model, the gateway's, ``rag/<collection>`` for the tenant's
        collections (blocking: reads the data directory)."""
        gateway_models = self.gateway.models() if self.gateway is not None else []
        names = tenancy.collections() if tenancy is not None else self._engine.collections()
        return [self.local_model, *gateway_models, *(RAG_PREFIX + c for c in names)]

    def uses_local_model(self, req: ChatCompletionRequest) -> bool:
        """Whether this request runs on the local model (it and rag/ names; not the gateway's)."""
        return self._routed(req) is None

    def collection_of(self, req: ChatCompletionRequest, tenancy: Tenancy | None) -> str | None:
        """The stored name of the RAG collection a request answers from (None: a plain chat, local
        or routed); 404 for a rag/ name that does not exist."""
        if self._routed(req) is not None:
            return None
        return self._resolve(req, tenancy)

    def source_ids(
        self, req: ChatCompletionRequest, collection: str
    ) -> Callable[[str, Any], Awaitable[list[str]]]:
        """The request's retrieval as the cache's sources check runs it: the chunk ids its answer
        would be built from, for a question and its embedding (the answer's own top_k and filters)."""
        rag = req.rag
        top_k = (rag.top_k if rag else None) or self._engine.settings.answer.top_k
        filters = rag.filters if rag else None

        async def retrieve(question: str, vector: Any) -> list[str]:
            hits = await asyncio.to_thread(
                self._engine.search,
                question,
                collection=collection,
                top_k=top_k,
                filters=filters,
                query_vector=vector,
            )
            return [h.chunk_id for h in hits]

        return retrieve

    def rag_mode(self, req: ChatCompletionRequest) -> str:
        return (req.rag.mode if req.rag is not None else None) or self._engine.settings.answer.mode

    def _routed(self, req: ChatCompletionRequest) -> Router | None:
        """The gateway when it serves this model name (the local model and rag/ names never are)."""
        gw = self.gateway
        return gw if gw is not None and gw.handles(req.model) else None

    def _resolve(self, req: ChatCompletionRequest, tenancy: Tenancy | None) -> str | None:
        """None for the local model, else the stored name of the RAG collection to answer from."""
        if req.model.startswith(RAG_PREFIX):
            name = req.model[len(RAG_PREFIX) :]
            stored = tenancy.stored(name, "model") if tenancy is not None else name
            if not self._engine.has_collection(stored):
                raise ModelNotFound(req.model)
            return stored
        if req.model != self.local_model:
            raise ModelNotFound(req.model)
        if req.rag is not None:
            if tenancy is None:
                return req.rag.collection or self._engine.settings.default_collection
            if req.rag.collection is None:
                return tenancy.default_collection()
            return tenancy.stored(req.rag.collection, "rag.collection")
        return None

    def _question(self, req: ChatCompletionRequest) -> str:
        """The RAG question (the last user message with text), within the query limits."""
        for m in reversed(req.messages):
            if m.role == "user" and m.text().strip():
                question = m.text()
                break
        else:
            raise BadRequest("RAG needs a user message with text", param="messages")
        check_query(self._engine, question, "messages")
        if req.rag is not None:
            check_filters(self._engine, req.rag.filters, "rag.filters")
        return question

    def check(self, req: ChatCompletionRequest) -> None:
        """Refuse a request past the server's limits (400 naming the setting), before any work.

        Every model: messages per request and estimated prompt tokens (characters / 4). The
        embedded model and ``rag/`` collections also: ``max_tokens`` within the model's context
        (the RAG question's length and filters are checked with the question, ``_question``).
        How OpenAI's fields combine (``chat_checks``), for every model; what the embedded model
        cannot honour, for it and ``rag/`` collections.
        """
        check_chat(req)
        limits = self._engine.settings.server
        if len(req.messages) > limits.max_messages:
            raise BadRequest(
                f"{len(req.messages)} messages; at most {limits.max_messages} per request "
                "(server.max_messages)",
                param="messages",
                code="too_many_messages",
            )
        chars = sum(len(m.text()) for m in req.messages)
        tokens = -(-chars // CHARS_PER_TOKEN)
        if tokens > limits.max_prompt_tokens:
            raise BadRequest(
                f"the messages hold about {tokens} tokens ({chars} characters / {CHARS_PER_TOKEN}); at most "
                f"{limits.max_prompt_tokens} prompt tokens per request (server.max_prompt_tokens)",
                param="messages",
                code="context_length_exceeded",
            )
        asked = req.max_completion_tokens or req.max_tokens
        if req.model == self.local_model or req.model.startswith(RAG_PREFIX):
            rag = req.rag is not None or req.model.startswith(RAG_PREFIX)
            fields = req.model_dump(include=_LOCAL_FIELDS, exclude_none=True)
            refused = unsupported(fields, rag=rag, n_parallel=self._engine.settings.llm.n_parallel)
            if refused is not None:
                raise BadRequest(refused[0], param=refused[1], code="unsupported")
            if rag:
                self._check_rag_tools(req)
            check_max_tokens(self._engine, req.model, asked)
        elif (group := self._engine.settings.gateway.models.get(req.model)) is not None:
            cap, where = group.max_tokens, f"gateway.models.{req.model}.max_tokens"
            if cap is None:
                cap, where = self._engine.settings.gateway.max_tokens, "gateway.max_tokens"
            if asked is not None and asked > cap:
                raise BadRequest(
                    f"max_tokens {asked} is more than model '{req.model}' allows ({cap} tokens, {where})",
                    param="max_tokens",
                    code="max_tokens_too_large",
                )
        # unknown names are a 404 later

    def _check_rag_tools(self, req: ChatCompletionRequest) -> None:
        """The caller's tools on a RAG answer: beside the sources (generate), or as steps the run
        hands back (agentic, which picks its own steps: ``tool_choice`` auto or none)."""
        mode = self.rag_mode(req)
        if req.tools and req.tool_choice != "none":
            if mode == "extractive":
                raise BadRequest(
                    "extractive answers call no tools: use rag.mode generate or agentic",
                    param="tools",
                    code="unsupported",
                )
            if mode == "agentic" and req.tool_choice not in (None, "auto"):
                raise BadRequest(
                    "agentic answers choose their own steps: tool_choice must be auto or none",
                    param="tool_choice",
                    code="unsupported",
                )
        if mode != "agentic" and req.messages and req.messages[-1].role == "tool" and not req.tools:
            raise BadRequest("a tool result needs the tools it answers", param="tools", code="invalid_value")

    # -- non-streaming -------------------------------------------------------------------

    async def complete(
        self,
        req: ChatCompletionRequest,
        headers: Mapping[str, str] | None = None,
        tenancy: Tenancy | None = None,
        on_answer: Callable[[Answer], None] | None = None,
        query_vector: Any = None,
    ) -> dict[str, Any]:
        """``on_answer`` is called with a RAG answer before it is shaped (the cache reads its sources);
        ``query_vector``: the RAG question's embedding when the caller has it (the cache's lookup)."""
        self.check(req)
        if (router := self._routed(req)) is not None:
            return await routed.complete(router, req, headers)
        collection = self._resolve(req, tenancy)
        with stop_when_abandoned() as on_token:  # the client went away: the generation stops
            if collection is not None:
                answer = await self._answer(req, collection, on_token, query_vector, tenancy)
                if on_answer is not None:
                    on_answer(answer)
                return self._rag_response(req, answer)
            # n choices are n generations at once, on n of the model's slots
            runs = [run_model(self._engine, self._chat, req, on_token, i) for i in range(req.n)]
            completions = await asyncio.gather(*runs)
        calling = tools.plan(req.tools, req.tool_choice) is not None
        return {
            "id": _chat_id(),
            "object": "chat.completion",
            "created": _now(),
            "model": req.model,
            "choices": [chat_choice(i, c, calling) for i, c in enumerate(completions)],
            "usage": choices_usage(completions),
        }

    def _chat(self, req: ChatCompletionRequest, on_token: Any, choice: int = 0) -> Completion:
        cfg = self._engine.settings.llm
        messages = [
            tools.render(m.role, m.text(), (m.model_extra or {}).get("tool_calls")) for m in req.messages
        ]
        response_format = req.response_format
        calling = tools.plan(req.tools, req.tool_choice)
        if calling is not None:
            messages = tools.with_system(messages, calling.system)
            response_format = calling.response_format
        try:
            with upstream("local"):
                return self._engine.llm.chat(
                    messages,
                    max_tokens=req.token_limit(cfg.max_tokens),
                    temperature=cfg.temperature if req.temperature is None else req.temperature,
                    top_p=req.top_p,
                    stop=req.stop_list(),
                    seed=choice_seed(req.seed, choice),
                    on_token=on_token,
                    response_format=response_format,
                    top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
                )
        except InvalidRequest as e:
            if calling is not None and e.param == "response_format":  # the tools' grammar
                raise BadRequest(str(e), param="tools") from e
            raise _map_llm_error(e) from e
        except RaglineError as e:
            raise _map_llm_error(e) from e

    async def _answer(
        self,
        req: ChatCompletionRequest,
        collection: str,
        on_token: Any,
        query_vector: Any = None,
        tenancy: Tenancy | None = None,
    ) -> Answer:
        question = self._question(req)
        rag = req.rag
        max_tokens = req.max_completion_tokens or req.max_tokens
        if self.rag_mode(req) == "agentic":
            run, decision = await self._run_of(req, question, collection, tenancy)
            return await self.continue_run(run, decision, on_token, max_tokens, query_vector)
        calling = tools.plan(req.tools, req.tool_choice)
        try:
            answer = await run_model(
                self._engine,
                self._engine.answer,
                question,
                collection=collection,
                mode=rag.mode if rag else None,
                top_k=rag.top_k if rag else None,
                filters=rag.filters if rag else None,
                on_token=on_token,
                max_tokens=max_tokens,
                query_vector=query_vector,
                calling=calling,
                history=_after_question(req) if req.tools else (),  # tool calls and results
            )
        except CollectionNotFound as e:
            raise ModelNotFound(req.model) from e
        except RaglineError as e:
            raise _map_llm_error(e) from e
        _count_generation(answer)
        return answer

    async def _run_of(
        self, req: ChatCompletionRequest, question: str, collection: str, tenancy: Tenancy | None
    ) -> tuple[agentic.RunState, agentic.Decision | None]:
        """The run a request starts, or continues: a last ``tool`` message answering a paused
        run's call (OpenAI's tool loop) is that call's output."""
        tenant = tenancy.tenant if tenancy is not None else None
        last = req.messages[-1]
        call_id = (last.model_extra or {}).get("tool_call_id") if last.role == "tool" else None
        run_id = agentic.RunState.of_call(call_id) if isinstance(call_id, str) else None
        if run_id is not None and isinstance(call_id, str):
            run = await self._runs.load(run_id, tenant) if self.runs is not None else None
            if run is None:
                raise BadRequest(
                    f"tool_call_id {call_id} belongs to no run of yours (finished runs are kept "
                    "answer.agent.run_ttl_s)",
                    param="messages",
                    code="run_not_found",
                )
            if run.collection != collection:
                raise BadRequest(f"run {run.id} answers from another collection", param="model")
            return run, agentic.Decision(call_id, output=last.text())
        caller_tools = req.tools if req.tools and req.tool_choice != "none" else None
        if caller_tools and self.runs is None:
            raise BadRequest("this server keeps no agentic runs: tools are refused", param="tools")
        rag = req.rag
        run = agentic.RunState.new(
            question, collection, rag.filters if rag else None, caller_tools, tenant, model=req.model
        )
        return run, None

    @property
    def _runs(self) -> RunStore:
        assert self.runs is not None
        return self.runs

    async def load_run(self, run_id: str, tenancy: Tenancy | None) -> agentic.RunState:
        run = await self._runs.load(run_id, tenancy.tenant if tenancy is not None else None)
        if run is None:
            raise NotFound(f"run {run_id!r} does not exist", param="run_id", code="run_not_found")
        return run

    async def continue_run(
        self,
        run: agentic.RunState,
        decision: agentic.Decision | None,
        on_token: Any = None,
        max_tokens: int | None = None,
        query_vector: Any = None,
    ) -> Answer:
        """Take a run forward (a claim on it held meanwhile) and keep what it became."""
        runs = self.runs
        if runs is not None and decision is not None:
            await runs.claim(run.id)
        try:
            if decision is not None:
                run = await self._runs.load(run.id, run.tenant) or run  # as stored now, under the claim
            answer = await run_model(
                self._engine,
                self._engine.agent_run,
                run,
                decision=decision,
                on_token=on_token,
                max_tokens=max_tokens,
                query_vector=query_vector,
            )
            if runs is not None:  # kept finished too: GET /v1/rag/runs/{id} shows its steps
                await runs.save(run)
        except agentic.DecisionError as e:
            raise BadRequest(str(e), param=e.param, code="invalid_decision") from e
        except CollectionNotFound as e:
            raise NotFound(f"run {run.id}'s collection no longer exists", param="run_id") from e
        except RaglineError as e:
            raise _map_llm_error(e) from e
        finally:
            if runs is not None and decision is not None:
                await runs.release(run.id)
        _count_generation(answer)
        return answer

    async def resume(
        self, run_id: str, decision: agentic.Decision, tenancy: Tenancy | None
    ) -> dict[str, Any]:
        """A paused run continued by the caller's decision: the next chat.completion."""
        run = await self.load_run(run_id, tenancy)
        with stop_when_abandoned() as on_token:
            answer = await self.continue_run(run, decision, on_token)
        return self.rag_response(run.model, answer)

    def _rag_response(self, req: ChatCompletionRequest, answer: Answer) -> dict[str, Any]:
        return self.rag_response(req.model, answer)

    def rag_response(self, model: str, answer: Answer) -> dict[str, Any]:
        d = answer.to_dict()
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        finish = "stop"
        if answer.tool_calls:
            message, finish = (
                {"role": "assistant", "content": None, "tool_calls": answer.tool_calls},
                "tool_calls",
            )
        ragline: dict[str, Any] = {"found": answer.found, "mode": answer.mode, "usage": d["usage"]}
        if answer.run is not None:
            ragline["run"] = answer.run
        return {
            "id": _chat_id(),
            "object": "chat.completion",
            "created": _now(),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(answer.usage.prompt_tokens, answer.usage.completion_tokens),
            "citations": d["citations"],
            "ragline": ragline,
        }

    # -- streaming -----------------------------------------------------------------------

    async def stream(
        self,
        req: ChatCompletionRequest,
        headers: Mapping[str, str] | None = None,
        tenancy: Tenancy | None = None,
        on_answer: Callable[[Answer], None] | None = None,
        query_vector: Any = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield chat.completion.chunk dicts; validation errors raise before the first yield."""
        self.check(req)
        if (router := self._routed(req)) is not None:
            async with contextlib.aclosing(routed.stream(router, req, headers)) as chunks:
                async for part in chunks:
                    yield part
            return
        collection = self._resolve(req, tenancy)
        if collection is None and req.n > 1:  # n choices at once, interleaved (rag/ is refused n > 1)
            async with contextlib.aclosing(self._stream_n(req)) as parts:
                async for part in parts:
                    yield part
            return
        if collection is not None:
            self._question(req)
        bridge = TokenBridge(asyncio.get_running_loop())

        async def run() -> Any:
            try:
                if collection is not None:
                    return await self._answer(req, collection, bridge.on_token, query_vector, tenancy)
                return await run_model(self._engine, self._chat, req, bridge.on_token)
            finally:
                bridge.finish()

        task = asyncio.create_task(run())
        cid, created = _chat_id(), _now()
        calling = collection is None and tools.plan(req.tools, req.tool_choice) is not None
        reader = tools.ToolStream() if calling else None  # a tool call is streamed as it is generated
        # a RAG answer offered the caller's tools is the grammar's JSON: sent once read and its
        # citations matched (agentic runs stream only their final answer's tokens)
        rag_calling = (
            collection is not None
            and self.rag_mode(req) != "agentic"
            and tools.plan(req.tools, req.tool_choice) is not None
        )

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }

        def piece(item: object) -> dict[str, Any]:
            out = chunk({"content": item})
            if isinstance(item, Piece):
                out["choices"][0]["logprobs"] = {"content": item.logprobs, "refusal": None}
            return out

        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                item = await bridge.get()
                if item is DONE:
                    break
                if reader is None:
                    if not rag_calling:
                        yield piece(item)
                    continue
                for delta in reader.feed(str(item)):
                    yield chunk(delta)
            result = await task
        finally:
            if not task.done():
                bridge.cancel()  # the reader is gone: stop the generation at its next token
                task.cancel()
        if isinstance(result, Answer):
            if on_answer is not None:
                on_answer(result)
            d = result.to_dict()
            info: dict[str, Any] = {"found": result.found, "text": result.text}
            if result.run is not None:
                info["run"] = result.run
            if result.tool_calls:
                for delta in tools.call_deltas(result.tool_calls):
                    yield chunk(delta)
                yield chunk({}, "tool_calls", citations=[], ragline=info)
            else:
                # The final text (with citations matched after generation) and the sources, before [DONE].
                if not result.found or result.mode == "extractive" or rag_calling:
                    yield chunk({"content": result.text})
                yield chunk({}, "stop", citations=d["citations"], ragline=info)
            prompt, completion = result.usage.prompt_tokens, result.usage.completion_tokens
        else:
            finish = result.finish_reason
            if reader is not None:
                deltas, finish = reader.end(finish)
                for delta in deltas:
                    yield chunk(delta)
            yield chunk({}, finish)
            prompt, completion = result.prompt_tokens, result.completion_tokens
        if req.stream_options and req.stream_options.include_usage:
            yield {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "choices": [],
                "usage": _usage(prompt, completion),
            }

    async def _stream_n(self, req: ChatCompletionRequest) -> AsyncGenerator[dict[str, Any], None]:
        """n choices of the local model streamed at once (``gateway.local.stream_choices``)."""
        cid, created = _chat_id(), _now()
        done: list[Completion] = []

        async def run(i: int, on_token: Any) -> Completion:
            return await run_model(self._engine, self._chat, req, on_token, i)

        def envelope(**extra: Any) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                **extra,
            }

        calling = tools.plan(req.tools, req.tool_choice) is not None
        async with contextlib.aclosing(stream_choices(req.n, run, calling=calling, done=done)) as choices:
            async for choice in choices:
                yield envelope(choices=[choice])
        if req.stream_options and req.stream_options.include_usage:
            yield envelope(choices=[], usage=choices_usage(done))


#: The fields ``gateway.local.unsupported`` reads.
_LOCAL_FIELDS = {"n", "stream", "tools", "tool_choice", "response_format", "logprobs"}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class EmbeddingService:
    """``/v1/embeddings``: inputs bounded, embedded through the dynamic batcher, the response
    encoded off the event loop.

    Limits (``server.*``): ``max_embedding_inputs`` strings per request, each at most
    ``max_embedding_input_chars`` characters, and ``max_embedding_tokens`` tokens in all, each
    input counted as the model reads it (its word pieces plus two, at most ``embedder.max_tokens``).
    A request's inputs share model calls with others' in batches of at most
    ``embedding_batch_max_size`` inputs and ``embedding_batch_max_tokens`` estimated tokens, taken
    in turn, so a large request never holds the model for a small one for more than a batch.
    """

    def __init__(
        self, engine: Engine, model_names: set[str], *, max_batch_size: int = 64, max_wait_ms: float = 2.0
    ) -> None:
        self._engine = engine
        self.model_names = model_names
        cap = engine.settings.embedder.max_tokens

        def estimated_tokens(text: str) -> int:  # what the model reads of it, roughly
            return min(len(text) // CHARS_PER_TOKEN + 2, cap)

        # concurrent requests share one model call (dynamic batching), off the event loop
        self.batcher: DynamicBatcher[tuple[Any, int]] = DynamicBatcher(
            self._embed_batch,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            name="embed-batch",
            weight=estimated_tokens,
            max_batch_weight=engine.settings.server.embedding_batch_max_tokens,
        )

    def _embed_batch(self, texts: list[str]) -> list[tuple[Any, int]]:
        """One model call for a batch: (vector, billed tokens) per text."""
        embedder = self._engine.embedder
        vectors = embedder.embed_documents(texts)
        counts = embedder.count_tokens(texts)
        return [(vectors[i], min(n + 2, embedder.max_tokens)) for i, n in enumerate(counts)]

    async def embed(self, req: EmbeddingRequest) -> dict[str, Any]:
        """The OpenAI embedding list; ``data`` is pre-encoded JSON (an ``orjson.Fragment``)."""
        if req.model not in self.model_names:
            raise ModelNotFound(req.model)
        inputs = [req.input] if isinstance(req.input, str) else req.input
        if not inputs:
            raise BadRequest("input must not be empty", param="input")
        if not all(isinstance(x, str) for x in inputs):
            raise BadRequest("token-id input is not supported; send strings", param="input")
        texts = [str(x) for x in inputs]
        if any(not t for t in texts):
            raise BadRequest("input strings must not be empty", param="input")
        if req.dimensions is not None and req.dimensions != self._engine.embedder.dim:
            raise BadRequest(f"this model has {self._engine.embedder.dim} dimensions", param="dimensions")
        await self._check_limits(texts)
        results, model_seconds = await self.batcher.submit(texts)
        stats = current()
        if stats is not None:
            stats.add_upstream(model_seconds, "local")
        tokens = sum(n for _, n in results)
        b64 = req.encoding_format == "base64"
        if len(results) > _INLINE_ROWS:  # megabytes of JSON: encoded in a worker thread, in slices
            data = await asyncio.to_thread(_embedding_data, results, b64)
        else:
            data = _embedding_data(results, b64)
        return {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _check_limits(self, texts: list[str]) -> None:
        limits = self._engine.settings.server
        if len(texts) > limits.max_embedding_inputs:
            raise BadRequest(
                f"input has {len(texts)} strings; at most {limits.max_embedding_inputs} per request "
                "(server.max_embedding_inputs)",
                param="input",
                code="too_many_inputs",
            )
        longest = max(len(t) for t in texts)
        if longest > limits.max_embedding_input_chars:
            raise BadRequest(
                f"an input has {longest} characters; at most {limits.max_embedding_input_chars} per input "
                "(server.max_embedding_input_chars)",
                param="input",
                code="input_too_long",
            )
        cap = self._engine.embedder.max_tokens
        limit = limits.max_embedding_tokens
        # a word piece covers at least one character: most requests are within the limit on sight
        if sum(min(len(t) + 2, cap) for t in texts) <= limit:
            return
        if await asyncio.to_thread(self._over_token_limit, texts, limit):
            raise BadRequest(
                f"input has more than {limit} tokens; at most {limit} per request "
                "(server.max_embedding_tokens)",
                param="input",
                code="too_many_tokens",
            )

    def _over_token_limit(self, texts: list[str], limit: int) -> bool:
        """Count as the model reads (worker thread), stopping as soon as the limit is passed."""
        embedder = self._engine.embedder
        total = 0
        for start in range(0, len(texts), 256):
            counts = embedder.count_tokens(texts[start : start + 256])
            total += sum(min(n + 2, embedder.max_tokens) for n in counts)
            if total > limit:
                return True
        return False


#: Responses with more rows than this are encoded in a worker thread.
_INLINE_ROWS = 64
#: Rows per orjson call: the GIL is released between calls, so the event loop keeps answering.
_SLICE_ROWS = 128


def _embedding_data(results: list[tuple[Any, int]], b64: bool) -> orjson.Fragment:
    """The ``data`` array of an embedding list, as JSON (float32 values, shortest exact repr)."""
    parts: list[bytes] = []
    for start in range(0, len(results), _SLICE_ROWS):
        rows: list[dict[str, Any]] = []
        for i, (v, _) in enumerate(results[start : start + _SLICE_ROWS], start):
            vec = np.ascontiguousarray(v, dtype="<f4")
            emb: Any = base64.b64encode(vec.tobytes()).decode() if b64 else vec
            rows.append({"object": "embedding", "index": i, "embedding": emb})
        parts.append(orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1])
    return orjson.Fragment(b"[" + b",".join(parts) + b"]")


def _after_question(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """The turns after the RAG question (the last user message): tool calls and their results."""
    messages = req.messages
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    return [
        tools.render(m.role, m.text(), (m.model_extra or {}).get("tool_calls"))
        for m in messages[last_user + 1 :]
    ]


def _count_generation(answer: Answer) -> None:
    stats = current()
    if stats is not None:  # retrieval is ragline's own time; generation is the model's
        stats.add_upstream(answer.usage.generation_ms / 1000.0, "local")
