"""The embedded local model (llama.cpp, in-process) as a deployment.

Every model call runs in a worker thread (``asyncio.to_thread`` unless the server hands in
its bounded LLM thread pool; llama.cpp releases the GIL), never on the event loop.
Streaming bridges the model's token callback to an asyncio queue. The model is taken from
a factory on first use, so building the gateway does not load it. Tools are called through
the grammar (``answer/tools.py``); what the local model cannot honour is refused with a 400
naming the field (``unsupported``), never ignored.

A generation nobody waits for any more (the client went away, a timeout fired) stops at its
next token, streamed or not: the token callback tells llama.cpp to stop (``answer/tokens.py``).
``max_tokens`` is capped at the model's context (``llm.n_ctx``): a larger one is refused (400).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from ragline.answer import tools
from ragline.answer.llm import LLM, Completion, Piece, TokenCallback
from ragline.answer.tokens import DONE, TokenBridge, stop_when_abandoned
from ragline.errors import ContextLengthExceeded, InvalidRequest, RaglineError
from ragline.gateway.deployment import DEFAULT_TIMEOUTS, Timeouts
from ragline.gateway.errors import UpstreamStatusError, UpstreamTimeout

#: The largest seed llama.cpp takes (a 64-bit unsigned integer).
SEED_MAX = 2**64 - 1
#: Runs a blocking model call in a worker thread (the server passes its bounded LLM pool).
ThreadRunner = Callable[[Callable[[], Completion]], Awaitable[Completion]]
#: Starts choice i's generation with its token callback (``stream_choices``).
ChoiceRun = Callable[[int, TokenCallback], Awaitable[Completion]]


async def _to_thread(fn: Callable[[], Completion]) -> Completion:
    return await asyncio.to_thread(fn)


def unsupported(body: Mapping[str, Any], *, rag: bool = False, n_parallel: int = 1) -> tuple[str, str] | None:
    """(message, param) for the first field of a chat request the embedded model cannot honour
    (``rag``: a ``rag/`` collection answers, from its own prompt; ``n_parallel``: the model's
    slots, ``llm.n_parallel``), or None."""
    n = body.get("n") or 1
    if n != 1:
        if rag:
            return "rag/ answers have one choice (n=1)", "n"
        if n > n_parallel:
            return (
                f"n={n} choices: the embedded model generates at most {n_parallel} at once (llm.n_parallel)",
                "n",
            )
    fmt = body.get("response_format")
    json_format = isinstance(fmt, dict) and fmt.get("type") not in (None, "text")
    if rag:  # the caller's tools: checked by the chat service, which knows the answer mode
        if json_format:
            return "rag/ answers are text with citations: response_format must be text", "response_format"
        if body.get("logprobs"):
            return "rag/ answers do not return logprobs", "logprobs"
        return None
    if body.get("tools") and body.get("tool_choice") != "none":
        # a tool call is the grammar's JSON: neither another format nor its tokens' logprobs apply
        if json_format:
            return "the embedded model takes tools or a JSON response_format, not both", "response_format"
        if body.get("logprobs"):
            return "the embedded model returns no logprobs for a request with tools", "logprobs"
    return None


class LocalDeployment:
    kind = "local"

    def __init__(
        self,
        name: str,
        llm: Callable[[], LLM],
        *,
        model: str = "local",
        max_tokens: int = 256,
        temperature: float = 0.0,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        run_in_thread: ThreadRunner | None = None,
        n_ctx: int | None = None,
        n_parallel: int = 1,
    ) -> None:
        self._name = name
        #: The model's slots: the most choices (``n``) one request may ask.
        self._n_parallel = n_parallel
        #: The model's context (tokens per slot): the largest ``max_tokens`` a request may ask.
        self._n_ctx = n_ctx
        self._run_in_thread = run_in_thread or _to_thread
        self._model = model
        self._llm = llm
        self._max_tokens = max_tokens
        self._temperature = temperature
        self.timeouts = timeouts

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        return self._model

    async def complete(self, body: dict[str, Any], *, budget: float) -> dict[str, Any]:
        limit = min(self.timeouts.total, budget)
        self._check(body)
        try:
            with stop_when_abandoned() as on_token:  # a timeout or a cancel stops the generation
                async with asyncio.timeout(limit):
                    # n choices are n generations at once, on n of the model's slots
                    runs = [
                        self._run_in_thread(functools.partial(self._generate, body, on_token, i))
                        for i in range(int(body.get("n") or 1))
                    ]
                    cs = await asyncio.gather(*runs)
        except TimeoutError as e:
            raise UpstreamTimeout(self._name, f"no answer within {limit:.2f} s") from e
        calling = _calling(body) is not None
        return {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._model,
            "choices": [chat_choice(i, c, calling) for i, c in enumerate(cs)],
            "usage": choices_usage(cs),
        }

    async def stream(self, body: dict[str, Any], *, budget: float) -> AsyncGenerator[dict[str, Any], None]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + min(self.timeouts.total, budget)
        first_by = min(end, start + self.timeouts.first_token)
        self._check(body)
        if int(body.get("n") or 1) > 1:
            async with contextlib.aclosing(self._stream_n(body, start, first_by, end)) as chunks:
                async for part in chunks:
                    yield part
            return
        bridge = TokenBridge(loop)

        async def run() -> Completion:
            try:
                return await self._run_in_thread(functools.partial(self._generate, body, bridge.on_token))
            finally:
                bridge.finish()

        task = asyncio.create_task(run())
        cid, created = _completion_id(), int(time.time())
        reader = tools.ToolStream() if _calling(body) is not None else None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self._model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        started = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                try:
                    async with asyncio.timeout_at(end if started else first_by):
                        item = await bridge.get()
                except TimeoutError as e:
                    what = "complete answer" if started else "first token"
                    raise UpstreamTimeout(self._name, f"no {what} within {loop.time() - start:.2f} s") from e
                if item is DONE:
                    break
                started = True
                if reader is not None:  # a tool call is streamed as it is generated
                    for delta in reader.feed(str(item)):
                        yield chunk(delta)
                    continue
                out = chunk({"content": item})
                if isinstance(item, Piece):
                    out["choices"][0]["logprobs"] = {"content": item.logprobs, "refusal": None}
                yield out
            result = await task
        finally:
            if not task.done():
                bridge.cancel()  # timed out or the reader is gone: stop the generation
                task.cancel()
        finish = result.finish_reason
        if reader is not None:
            deltas, finish = reader.end(finish)
            for delta in deltas:
                yield chunk(delta)
        yield chunk({}, finish)
        opts = body.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage"):
            yield {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self._model,
                "choices": [],
                "usage": _usage(result),
            }

    async def _stream_n(
        self, body: dict[str, Any], start: float, first_by: float, end: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        """n choices streamed at once (``stream_choices``), within the first-token and total limits."""
        loop = asyncio.get_running_loop()
        cid, created = _completion_id(), int(time.time())
        done: list[Completion] = []

        async def run(i: int, on_token: TokenCallback) -> Completion:
            return await self._run_in_thread(functools.partial(self._generate, body, on_token, i))

        def envelope(**extra: Any) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self._model,
                **extra,
            }

        choices = stream_choices(
            int(body["n"]),
            run,
            calling=_calling(body) is not None,
            deadline=lambda s: end if s else first_by,
            done=done,
        )
        started = False
        try:
            async with contextlib.aclosing(choices) as parts:
                async for choice in parts:
                    delta = choice["delta"]
                    started = started or bool(delta.get("content") or delta.get("tool_calls"))
                    yield envelope(choices=[choice])
        except TimeoutError as e:
            what = "complete answer" if started else "first token"
            raise UpstreamTimeout(self._name, f"no {what} within {loop.time() - start:.2f} s") from e
        opts = body.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage"):
            yield envelope(choices=[], usage=choices_usage(done))

    async def probe(self, timeout: float) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _budget(self, body: dict[str, Any]) -> int:
        return int(body.get("max_completion_tokens") or body.get("max_tokens") or self._max_tokens)

    def _check(self, body: dict[str, Any]) -> None:
        """A 400 for what the model cannot honour or hold (the gateway checked how fields combine)."""
        refused = unsupported(body, n_parallel=self._n_parallel)
        if refused is not None:
            message, param = refused
            raise UpstreamStatusError(
                self._name, 400, {"message": message, "param": param, "code": "unsupported"}
            )
        self._check_max_tokens(body)

    def _check_max_tokens(self, body: dict[str, Any]) -> None:
        if self._n_ctx is not None and self._budget(body) > self._n_ctx:
            message = (
                f"max_tokens {self._budget(body)} is more than the model's context of {self._n_ctx} "
                "tokens (llm.n_ctx)"
            )
            raise UpstreamStatusError(
                self._name, 400, {"message": message, "param": "max_tokens", "code": "max_tokens_too_large"}
            )

    def _generate(self, body: dict[str, Any], on_token: TokenCallback | None, choice: int = 0) -> Completion:
        messages = [
            tools.render(str(m.get("role")), _text(m), m.get("tool_calls"))
            for m in body.get("messages") or ()
            if isinstance(m, dict)
        ]
        response_format = body.get("response_format")
        calling = _calling(body)
        if calling is not None:
            messages = tools.with_system(messages, calling.system)
            response_format = calling.response_format
        stop = body.get("stop")
        temperature = body.get("temperature")
        try:
            return self._llm().chat(
                messages,
                max_tokens=self._budget(body),
                temperature=self._temperature if temperature is None else float(temperature),
                top_p=body.get("top_p"),
                stop=[stop] if isinstance(stop, str) else stop,
                seed=choice_seed(body.get("seed"), choice),
                on_token=on_token,
                response_format=response_format,
                top_logprobs=int(body.get("top_logprobs") or 0) if body.get("logprobs") else None,
            )
        except InvalidRequest as e:
            code = "context_length_exceeded" if isinstance(e, ContextLengthExceeded) else None
            param = "tools" if calling is not None and e.param == "response_format" else e.param
            detail = {"message": str(e), "param": param, "code": code}
            raise UpstreamStatusError(self._name, 400, detail) from e
        except RaglineError as e:
            msg = str(e)
            status = 400 if "context" in msg.lower() or "exceed" in msg.lower() else 500
            code = "context_length_exceeded" if status == 400 else None
            raise UpstreamStatusError(self._name, status, {"message": msg, "code": code}) from e


def chat_choice(index: int, c: Completion, tool_calling: bool) -> dict[str, Any]:
    """One choice of a chat.completion: the text, or the tool calls read from it; logprobs if asked."""
    message: dict[str, Any] = {"role": "assistant", "content": c.text}
    finish = c.finish_reason
    if tool_calling:
        reply = tools.read(c.text)
        message, finish = reply.message(), tools.finish_reason(reply, finish)
    out: dict[str, Any] = {"index": index, "message": message}
    if c.logprobs is not None:
        out["logprobs"] = {"content": c.logprobs, "refusal": None}
    out["finish_reason"] = finish
    return out


async def stream_choices(
    n: int,
    run: ChoiceRun,
    *,
    calling: bool,
    done: list[Completion],
    deadline: Callable[[bool], float | None] = lambda started: None,
) -> AsyncGenerator[dict[str, Any], None]:
    """The ``choices`` entries of a chat.completion.chunk stream for n generations at once (on n
    of the model's slots), as OpenAI streams them: every choice's role first, then each piece as
    it comes, interleaved, tagged with its choice's ``index`` (with tools: each choice's tool call
    deltas as its model generates them, ``tools.ToolStream``), and each choice's own end (its
    ``finish_reason``) when it ends. ``done`` receives the n completions, in
    order, once every choice has ended (for the usage). ``deadline(started)``: the loop time by
    which the next piece must come (TimeoutError), None for no limit.

    When the reader goes away (or a choice fails, or a deadline passes) every generation still
    running stops at its next token."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
    stop = threading.Event()

    def on_token_of(i: int) -> TokenCallback:
        def on_token(piece: str) -> bool:  # the model's worker thread
            if stop.is_set():
                return True
            loop.call_soon_threadsafe(queue.put_nowait, (i, piece))
            return False

        return on_token

    async def generate(i: int) -> None:
        try:
            result: object = await run(i, on_token_of(i))
        except Exception as e:  # raised to the reader, in order after the pieces already queued
            result = e
        loop.call_soon_threadsafe(queue.put_nowait, (i, result))

    tasks = [asyncio.create_task(generate(i)) for i in range(n)]
    readers = [tools.ToolStream() for _ in range(n)] if calling else None  # each choice's tool call
    results: dict[int, Completion] = {}
    started = False
    try:
        for i in range(n):
            yield {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        while len(results) < n:
            async with asyncio.timeout_at(deadline(started)):
                i, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, Completion):
                results[i] = item
                finish = item.finish_reason
                if readers is not None:
                    deltas, finish = readers[i].end(finish)
                    for delta in deltas:
                        yield {"index": i, "delta": delta, "finish_reason": None}
                yield {"index": i, "delta": {}, "finish_reason": finish}
                continue
            started = True
            if readers is not None:  # a tool call is streamed as it is generated
                for delta in readers[i].feed(str(item)):
                    yield {"index": i, "delta": delta, "finish_reason": None}
                continue
            out: dict[str, Any] = {"index": i, "delta": {"content": item}, "finish_reason": None}
            if isinstance(item, Piece):
                out["logprobs"] = {"content": item.logprobs, "refusal": None}
            yield out
        done.extend(results[i] for i in range(n))
    finally:
        if not all(t.done() for t in tasks):
            stop.set()  # the reader is gone (or a choice failed): every generation stops
            for t in tasks:
                t.cancel()


def choices_usage(cs: Sequence[Completion]) -> dict[str, int]:
    """The usage of n choices of one prompt: the prompt once (OpenAI's count), every choice's tokens."""
    prompt = cs[0].prompt_tokens
    completion = sum(c.completion_tokens for c in cs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def choice_seed(seed: Any, choice: int) -> Any:
    """Choice i of a seeded request samples with seed + i: the choices differ, the request repeats.
    (-1 is llama.cpp's "random": kept.)"""
    if not isinstance(seed, int) or seed == -1 or choice == 0:
        return seed
    return seed + choice if seed + choice <= SEED_MAX else seed - choice


def _calling(body: dict[str, Any]) -> tools.ToolCalling | None:
    return tools.plan(body.get("tools"), body.get("tool_choice"))


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _usage(c: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]
