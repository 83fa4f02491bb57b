"""OpenAI's legacy text completions (``/v1/completions``) on the local model.

Testable without HTTP, like serving.py: validated request in, OpenAI-shaped
``text_completion`` dicts out. The model runs on the LLM worker threads;
streaming bridges llama.cpp's token callback to an asyncio queue, and a non-streamed
generation whose caller went away stops at its next token. The prompt (estimated tokens,
``server.max_prompt_tokens``) and ``max_tokens`` (the model's context) are bounded.

``logprobs`` (0-5) is OpenAI's legacy shape (``legacy_logprobs``), streamed (each chunk the
logprobs of its own text) or not; ``echo`` with ``logprobs`` is refused (400 naming ``echo``):
llama.cpp scores no prompt tokens, and OpenAI's answer would carry theirs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ragline.answer.llm import Completion, Piece, TokenLogprob
from ragline.answer.tokens import DONE, TokenBridge, stop_when_abandoned
from ragline.engine import Engine
from ragline.errors import ContextLengthExceeded
from ragline.gateway.rules import CHARS_PER_TOKEN
from ragline.observability.context import upstream
from ragline.server.chat_checks import check_stream_options
from ragline.server.errors import BadRequest, ModelNotFound
from ragline.server.model_threads import run_model
from ragline.server.protocol import CompletionRequest
from ragline.server.serving import check_max_tokens

LOCAL_DEPLOYMENT = "local"


def _usage(c: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def legacy_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs`` from tokens in chat's shape: the token strings (they join to
    the text), each one's logprob, its alternatives as ``{token: logprob}`` (the asked number,
    plus the sampled token when it is not among them: at most ``logprobs`` + 1, as OpenAI), and
    where each token starts in the returned text (``offset``: where these tokens' text starts)."""
    text_offset: list[int] = []
    for t in tokens:
        text_offset.append(offset)
        offset += len(str(t["token"]))
    top: list[dict[str, float]] = []
    for t in tokens:
        alternatives = {str(a["token"]): float(a["logprob"]) for a in t.get("top_logprobs") or ()}
        alternatives.setdefault(str(t["token"]), float(t["logprob"]))
        top.append(alternatives)
    return {
        "tokens": [str(t["token"]) for t in tokens],
        "token_logprobs": [float(t["logprob"]) for t in tokens],
        "top_logprobs": top,
        "text_offset": text_offset,
    }


class CompletionService:
    def __init__(self, engine: Engine, local_model: str) -> None:
        self._engine = engine
        self.local_model = local_model

    def _validate(self, req: CompletionRequest) -> str:
        """The prompt text; raises the API error for anything this endpoint cannot serve."""
        if req.model != self.local_model:
            raise ModelNotFound(req.model)
        check_stream_options(req)
        if req.echo and req.logprobs is not None:
            raise BadRequest(
                "echo with logprobs is not supported: the local model does not score the prompt's tokens",
                param="echo",
                code="unsupported",
            )
        prompt: object = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise BadRequest("send exactly one prompt per request", param="prompt")
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("token-id prompts are not supported; send a string", param="prompt")
        limit = self._engine.settings.server.max_prompt_tokens
        tokens = -(-len(prompt) // CHARS_PER_TOKEN)
        if tokens > limit:
            raise BadRequest(
                f"the prompt holds about {tokens} tokens ({len(prompt)} characters / {CHARS_PER_TOKEN}); "
                f"at most {limit} prompt tokens per request (server.max_prompt_tokens)",
                param="prompt",
                code="context_length_exceeded",
            )
        check_max_tokens(self._engine, req.model, req.max_tokens)
        return prompt

    def _generate(self, req: CompletionRequest, prompt: str, on_token: Any) -> Completion:
        cfg = self._engine.settings.llm
        llm = self._engine.llm
        try:
            with upstream(LOCAL_DEPLOYMENT):
                return llm.complete(
                    prompt,
                    max_tokens=req.max_tokens or cfg.max_tokens,
                    temperature=cfg.temperature if req.temperature is None else req.temperature,
                    top_p=req.top_p,
                    stop=req.stop_list(),
                    seed=req.seed,
                    on_token=on_token,
                    top_logprobs=req.logprobs,
                )
        except ContextLengthExceeded as e:
            raise BadRequest(str(e), param="prompt", code="context_length_exceeded") from e

    def _envelope(self, cid: str, created: int, req: CompletionRequest) -> dict[str, Any]:
        return {"id": cid, "object": "text_completion", "created": created, "model": req.model}

    async def complete(self, req: CompletionRequest) -> dict[str, Any]:
        prompt = self._validate(req)
        with stop_when_abandoned() as on_token:  # the client went away: the generation stops
            c = await run_model(self._engine, self._generate, req, prompt, on_token)
        text = prompt + c.text if req.echo else c.text
        return {
            **self._envelope("cmpl-" + uuid.uuid4().hex[:24], int(time.time()), req),
            "choices": [
                {
                    "text": text,
                    "index": 0,
                    "logprobs": None if c.logprobs is None else legacy_logprobs(c.logprobs),
                    "finish_reason": c.finish_reason,
                }
            ],
            "usage": _usage(c),
        }

    async def stream(self, req: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """Yield text_completion chunks; validation errors raise before the first yield."""
        prompt = self._validate(req)
        bridge = TokenBridge(asyncio.get_running_loop())

        async def run() -> Completion:
            try:
                return await run_model(self._engine, self._generate, req, prompt, bridge.on_token)
            finally:
                bridge.finish()

        envelope = self._envelope("cmpl-" + uuid.uuid4().hex[:24], int(time.time()), req)

        offset = 0  # where the next piece starts in the streamed text (for text_offset)

        def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
            nonlocal offset
            logprobs = None
            if isinstance(text, Piece):
                logprobs = legacy_logprobs(text.logprobs, offset)
            offset += len(text)
            choice = {"text": str(text), "index": 0, "logprobs": logprobs, "finish_reason": finish}
            return {**envelope, "choices": [choice]}

        task = asyncio.create_task(run())
        try:
            # the first item is the model's first token or its end: errors before any text raise here
            item = await bridge.get()
            if item is DONE:
                result = await task
            if req.echo:
                yield chunk(prompt)
            while item is not DONE:
                yield chunk(item if isinstance(item, Piece) else str(item))
                item = await bridge.get()
            result = await task
        finally:
            if not task.done():
                bridge.cancel()  # the reader is gone: stop the generation at its next token
                task.cancel()
        yield chunk("", result.finish_reason)
        if req.stream_options and req.stream_options.include_usage:
            yield {**envelope, "choices": [], "usage": _usage(result)}
