"""The wire contract: OpenAI-compatible request and error shapes (pydantic).

Responses are built as plain dicts in serving.py (cheaper than models on the hot path);
their shapes follow OpenAI's chat.completion / chat.completion.chunk / embedding list.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ragline.gateway.codec import check_text

#: What the model runtime can represent (llama.cpp: a 32-bit token count, a 64-bit seed).
MAX_TOKENS_LIMIT = 2**31 - 1
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def _utf8(v: str) -> str:
    # JSON "\ud800" escapes decode to unpaired surrogates, which no model runtime or tokenizer accepts
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no unpaired surrogates)") from None
    return v


#: A string that can be handed to a tokenizer or a model runtime.
Text = Annotated[str, AfterValidator(_utf8)]


class _PassThrough(BaseModel):
    """A model whose unknown fields are kept (and sent on to gateway upstreams): they must be
    encodable, i.e. no unpaired surrogates and no absurd nesting, or encoding them later fails."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _extra_is_sendable(self) -> Self:
        extra = self.__pydantic_extra__
        if extra:
            problem = check_text(extra)
            if problem is not None:
                raise ValueError(problem)
        return self


class ContentPart(_PassThrough):
    type: Text
    text: Text | None = None


class ChatMessage(_PassThrough):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class StreamOptions(BaseModel):
    include_usage: bool = False


class RagOptions(BaseModel):
    """ragline extension (send with the SDK's ``extra_body={"rag": {...}}``)."""

    collection: Text | None = None
    top_k: int | None = Field(None, ge=1, le=50)
    mode: Literal["generate", "extractive", "agentic"] | None = None
    filters: list[Text] | None = None


class ApprovalRequest(BaseModel):
    """``POST /v1/rag/runs/{id}/approve``: the caller's word on a paused run's server tool call."""

    model_config = ConfigDict(extra="forbid")

    tool_call_id: Text = Field(min_length=1, max_length=128)
    approve: bool
    reason: Text = Field("", max_length=2000)


class ToolOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool_call_id: Text = Field(min_length=1, max_length=128)
    output: Text = Field(max_length=100_000)


class ToolOutputsRequest(BaseModel):
    """``POST /v1/rag/runs/{id}/submit_tool_outputs``: the output of a paused run's call to one of
    the caller's tools (OpenAI Assistants' shape; a run waits on one call at a time)."""

    model_config = ConfigDict(extra="forbid")

    tool_outputs: list[ToolOutput] = Field(min_length=1, max_length=1)


class _GenerationRequest(_PassThrough):
    """Fields and checks the chat and the legacy completions request share."""

    # unknown fields pass through (gateway) or are ignored

    model: Text = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    user: Text | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def stop_list(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_GenerationRequest):
    """Every field passes through to gateway upstreams as sent; how the fields combine is
    checked in ``chat_checks.py``, what the embedded model cannot do in ``gateway/local.py``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    #: Choices per request (OpenAI's limit); the embedded model answers one (``gateway/local.py``).
    n: int = Field(1, ge=1, le=128)
    #: ``{"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", ...}}``
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    #: ``[{"type": "function", "function": {"name", "description", "parameters"}}]``
    tools: list[dict[str, Any]] | None = None
    #: ``"none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}``
    tool_choice: str | dict[str, Any] | None = None
    rag: RagOptions | None = None
    #: ragline extension (``extra_body={"cache": ...}``): ``no-cache`` answers afresh (and stores the
    #: answer), ``no-store`` neither reads nor stores, ``force`` caches a request that samples.
    cache: Literal["no-cache", "no-store", "force"] | None = None

    @model_validator(mode="after")
    def _free_form_is_sendable(self) -> Self:
        given = [v for v in (self.response_format, self.tools, self.tool_choice) if v is not None]
        problem = check_text(given) if given else None  # most requests have none of them
        if problem is not None:
            raise ValueError(problem)
        return self

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class CompletionRequest(_GenerationRequest):
    """OpenAI's legacy ``/v1/completions``: one prompt, one choice."""

    # logit_bias, penalties, ... are accepted and ignored

    prompt: Text | list[Text] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_LIMIT)  # OpenAI's default for this endpoint
    echo: bool = False
    suffix: str | None = None
    #: The legacy shape: how many alternatives per token (0-5), each token's own logprob always.
    logprobs: int | None = Field(None, ge=0, le=5)
    n: int = Field(1, ge=1)
    best_of: int | None = None

    @field_validator("n", "best_of")
    @classmethod
    def _only_one_choice(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("only one choice per request is supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (insertion) is not supported")
        return v


class EmbeddingRequest(_PassThrough):
    model: Text = Field(min_length=1)
    input: Text | list[Text] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: Text | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
