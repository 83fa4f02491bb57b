"""One typed settings object, read from a YAML file and RAGLINE_* environment variables.

Environment variables override the file; nested fields use a double underscore,
e.g. ``RAGLINE_CHUNKING__CHUNK_TOKENS=200``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ragline.errors import ConfigError


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ragline"


class EmbedderSettings(BaseModel):
    kind: Literal["minilm", "onnx_dir"] = "minilm"
    #: For kind=onnx_dir: a directory holding model.onnx (or *.onnx) and tokenizer.json.
    path: Path | None = None
    max_tokens: int = Field(
        256, ge=16, le=8192, description="word pieces the model reads, incl. special tokens"
    )
    batch_size: int = Field(32, ge=1, le=1024)
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 = all cores")
    normalize: bool = True
    #: Text placed before queries / passages (e5/bge-style models need one).
    query_prefix: str = ""
    passage_prefix: str = ""


class LLMSettings(BaseModel):
    kind: Literal["smollm2", "gguf"] = "smollm2"
    #: For kind=gguf: a path to any GGUF file.
    path: Path | None = None
    n_ctx: int = Field(4096, ge=256)
    n_parallel: int = Field(4, ge=1, le=64, description="llama.cpp slots (continuous batching)")
    threads: int = Field(0, ge=0, description="llama.cpp threads; 0 = half the cores (at least 1)")
    #: Threads for prompt prefill: large batches, where every core pays off (on 2 cores, time to
    #: first token 0.85 s with 2 vs 1.37 s with 1; bench/rag_answers.py --threads-batch); 0 = all cores.
    threads_batch: int = Field(0, ge=0)
    #: Default completion budget of chat requests that do not set max_tokens.
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int = 42
    #: llama.cpp's DRY sampler: penalises repeating a sequence the output already holds (small
    #: models loop); the default for requests that do not set it. 0 = off.
    dry_multiplier: float = Field(0.8, ge=0.0, le=5.0)


class ChunkingSettings(BaseModel):
    #: Content tokens per chunk (word pieces of the embedding model). Clamped so the
    #: chunk plus its title/section header never exceeds what the embedder reads. 128 with a
    #: 48-token lexical context measured best over five judged sets (docs/BENCHMARKS.md).
    chunk_tokens: int = Field(128, ge=16)
    overlap_tokens: int = Field(32, ge=0)
    #: Reserve at most this many tokens of the budget for the title/section header.
    max_header_tokens: int = Field(48, ge=0)
    #: BM25 indexes each chunk widened by this many tokens of its section on each side (the
    #: dense vector still covers the chunk alone): small chunks suit the embedder, wider text
    #: suits BM25's term statistics. 0 = BM25 sees exactly the chunk.
    lexical_context_tokens: int = Field(48, ge=0, le=4096)
    #: How many times the document title counts in what BM25 indexes for each chunk (1 = once,
    #: in the header; 2 = twice: a title match weighs more than a match in the body).
    lexical_title_weight: int = Field(1, ge=1, le=8)

    @field_validator("overlap_tokens")
    @classmethod
    def _overlap_lt_chunk(cls, v: int, info: Any) -> int:
        size = info.data.get("chunk_tokens", 128)
        if v >= size:
            raise ValueError(f"overlap_tokens ({v}) must be smaller than chunk_tokens ({size})")
        return v


class IngestSettings(BaseModel):
    max_file_bytes: int = Field(50 * 1024 * 1024, ge=1)
    near_duplicate_threshold: float = Field(0.9, gt=0.0, le=1.0, description="MinHash Jaccard threshold")
    near_duplicate_detection: bool = True
    minhash_permutations: int = Field(128, ge=16, le=1024)
    upsert_batch: int = Field(256, ge=1)


class RetrievalSettings(BaseModel):
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    top_k: int = Field(5, ge=1, le=1000)
    #: Defaults: the configuration with the best mean nDCG@10 over five judged sets (SciFact,
    #: NFCorpus, Cranfield, XQuAD, COVID-QA) that also beats the better single retriever on each;
    #: see docs/BENCHMARKS.md "Retrieval quality".
    fusion: Literal["rrf", "convex"] = "convex"
    #: The k of RRF (the best k measured for fusion=rrf).
    rrf_k: int = Field(10, ge=1)
    #: Weight of the dense retriever in convex fusion (BM25 gets 1 - alpha).
    convex_alpha: float = Field(0.5, ge=0.0, le=1.0)
    #: How convex fusion puts each list's scores on one scale: "minmax" ([min, max] -> [0, 1]) or
    #: "dbsf" ([mean - 3 sd, mean + 3 sd] -> [0, 1], distribution-based score fusion).
    normalization: Literal["minmax", "dbsf"] = "minmax"
    #: Candidates each retriever contributes before fusion.
    candidates: int = Field(100, ge=1, le=10000)
    hnsw_ef: int = Field(128, ge=4)
    #: Dense pseudo-relevance feedback in hybrid mode: the top ``prf_docs`` documents of the
    #: first fused ranking move the query vector (q + prf_beta * their mean); 0 = off.
    prf_docs: int = Field(3, ge=0, le=20)
    prf_beta: float = Field(1.0, ge=0.0, le=10.0)
    #: How the expanded query is used: "rescore" the first-stage candidates (dense and BM25) by
    #: their stored vectors (no second index search), or "search" the dense index again (may
    #: find chunks neither first list held; costs a second HNSW search).
    prf_mode: Literal["rescore", "search"] = "rescore"
    #: BM25 parameters (the engine's built-in BM25, Snowball English stemmer).
    bm25_k: float = Field(1.2, ge=0.0)
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)
    bm25_avg_len: float = Field(
        120.0, gt=0.0, description="expected tokens per chunk after stop-word removal"
    )


class RerankSettings(BaseModel):
    """Optional second stage: rerank the fused ``candidates`` down to top_k."""

    kind: Literal["none", "onnx", "remote"] = "none"
    #: kind=onnx: a directory with a cross-encoder model.onnx and its tokenizer.json.
    path: Path | None = None
    max_tokens: int = Field(512, ge=16)
    #: kind=remote: the rerank endpoint (Cohere/Jina/TEI-style), e.g. http://host:8080/rerank.
    url: str | None = None
    model: str = ""
    api_key: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(10.0, gt=0)
    #: How many first-stage hits are reranked (then cut to top_k).
    candidates: int = Field(50, ge=1, le=1000)


class AnswerSettings(BaseModel):
    mode: Literal["generate", "extractive"] = "generate"
    top_k: int = Field(3, ge=1, le=50)
    context_tokens: int = Field(900, ge=64, description="token budget for the numbered sources")
    #: Cosine similarity (query vs. best chunk) below which nothing is relevant enough. MiniLM
    #: gives on-topic questions about ragline's docs >= 0.30 and off-topic ones <= 0.24.
    min_relevance: float = Field(0.27, ge=-1.0, le=1.0)
    extractive_sentences: int = Field(3, ge=1, le=20)
    #: Generate mode shows the model only the sources' sentences most similar to the question,
    #: this many in all (a small model copies what it sees); 0 = the whole chunks.
    context_sentences: int = Field(4, ge=0, le=50)
    #: New tokens a generated answer may take. The prompt asks for one or two sentences (mean
    #: 44 tokens on XQuAD); the cap cuts the small model's occasional run-on, which sets the P95
    #: latency (96: P95 2.3 s, same F1 and citation precision as 256).
    max_tokens: int = Field(96, ge=1, le=4096)
    #: Build answers from each source's window (the chunk plus ``chunking.lexical_context_tokens``
    #: of its section on either side, stored at ingestion) instead of the chunk alone: search
    #: ranks small chunks, the model reads, and citations point at, the wider text.
    source_window: bool = True


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    #: The name clients use for the embedded local LLM.
    local_model: str = Field("local", min_length=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: Dynamic batching of /v1/embeddings: texts per model call, and how long the oldest waits for more.
    embedding_batch_max_size: int = Field(64, ge=1, le=4096)
    embedding_batch_max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)


# -- gateway ----------------------------------------------------------------------------

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$"


class GatewayTimeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect_s: float = Field(5.0, gt=0.0, description="TCP/TLS connect to the upstream")
    first_token_s: float = Field(60.0, gt=0.0, description="request sent -> first streamed chunk")
    total_s: float = Field(600.0, gt=0.0, description="whole upstream call")


class GatewayDeploymentSettings(BaseModel):
    """One place a model runs: the embedded local model, or an OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN, description="unique; used in metrics and logs")
    kind: Literal["local", "openai"] = "openai"
    #: For kind=openai: the API root, e.g. http://10.0.0.5:8000/v1
    #: (requests go to {base_url}/chat/completions, probes to {base_url}/models).
    base_url: str | None = None
    api_key: SecretStr | None = None
    #: Name of an environment variable holding the API key (read at start-up).
    api_key_env: str | None = None
    #: The upstream's model id (the request's `model` is rewritten to it); for kind=local the
    #: name the answers carry (default "local").
    model: str | None = None
    weight: float = Field(1.0, gt=0.0, description="share of traffic under strategy=weighted")
    timeouts: GatewayTimeouts = GatewayTimeouts()
    max_connections: int = Field(100, ge=1, le=10000, description="pooled connections to this upstream")
    #: Take part in active health probes (GET {base_url}/models).
    health_check: bool = True

    @model_validator(mode="after")
    def _check_kind(self) -> GatewayDeploymentSettings:
        if self.kind == "openai":
            if not self.base_url:
                raise ValueError(
                    f"deployment '{self.name}': kind openai needs base_url (e.g. http://host:8000/v1)"
                )
            url = urlsplit(self.base_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(
                    f"deployment '{self.name}': base_url '{self.base_url}' is not an http(s) URL "
                    "with a host, e.g. http://127.0.0.1:8000/v1"
                )
            if url.query or url.fragment:
                raise ValueError(f"deployment '{self.name}': base_url must not carry a query or fragment")
            if not self.model:
                raise ValueError(
                    f"deployment '{self.name}': kind openai needs model (the upstream's model id)"
                )
        elif self.base_url or self.api_key or self.api_key_env:
            raise ValueError(f"deployment '{self.name}': kind local takes no base_url or api key")
        if self.api_key_env and self.api_key is None:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ValueError(
                    f"deployment '{self.name}': environment variable {self.api_key_env} "
                    "(api_key_env) is not set"
                )
            self.api_key = SecretStr(value)
        return self


class GatewayModelSettings(BaseModel):
    """A model name clients send, served by a group of deployments."""

    model_config = ConfigDict(extra="forbid")

    deployments: list[str] = Field(min_length=1)
    strategy: Literal["round_robin", "least_in_flight", "weighted", "lowest_latency"] = "round_robin"
    #: Model names tried in order when every deployment of this one is down, open or failed.
    fallbacks: list[str] = []


class GatewayRuleSettings(BaseModel):
    """Route a request to a model group by task type, prompt size or cost tier (first match wins).

    Conditions given together must all hold; a rule with no condition matches everything
    (use it last, as the default of a virtual model such as ``auto``).
    """

    model_config = ConfigDict(extra="forbid")

    #: The requested model name the rule applies to; unset = every gateway model. A name that
    #: is not under `models` becomes a virtual model (listed by /v1/models).
    model: str | None = None
    #: Values of the `x-ragline-task` request header.
    task: list[str] | None = None
    #: Values of the `x-ragline-tier` request header.
    tier: list[str] | None = None
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=0)
    #: Prompt tokens, estimated as characters / 4.
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=0)
    #: The model group (a name under `models`) to send matching requests to.
    group: str

    def is_default(self) -> bool:
        return all(
            v is None
            for v in (self.task, self.tier, self.min_chars, self.max_chars, self.min_tokens, self.max_tokens)
        )


class GatewayRetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Attempts per model group, the first included (connect errors, 429 and 5xx are retried).
    max_attempts: int = Field(3, ge=1, le=10)
    backoff_base_s: float = Field(0.1, ge=0.0, description="full jitter: sleep U(0, min(max, base*2^n))")
    backoff_max_s: float = Field(5.0, ge=0.0)
    #: A Retry-After longer than this is not waited for (the deployment is skipped instead).
    max_retry_after_s: float = Field(30.0, ge=0.0)


class GatewayBreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    consecutive_failures: int = Field(5, ge=1, description="open after this many failures in a row")
    failure_rate: float = Field(0.5, gt=0.0, le=1.0, description="or this share of the window failing")
    window: int = Field(20, ge=1, description="outcomes remembered for failure_rate")
    min_requests: int = Field(10, ge=1, description="outcomes needed before failure_rate applies")
    cooldown_s: float = Field(30.0, gt=0.0, description="open -> half-open (one probe request) after this")


class GatewayHealthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(10.0, ge=0.0, description="active probe period; 0 disables active probes")
    timeout_s: float = Field(2.0, gt=0.0)
    unhealthy_after: int = Field(2, ge=1, description="failed probes in a row that take it out of rotation")
    healthy_after: int = Field(1, ge=1, description="good probes in a row that bring it back")
    #: Connect failures in a row on real traffic that take a probed deployment out until a probe succeeds.
    passive_failures: int = Field(3, ge=1)


class GatewaySettings(BaseModel):
    """The LLM gateway: deployments, the model names that route to them, and resilience knobs."""

    model_config = ConfigDict(extra="forbid")

    deployments: list[GatewayDeploymentSettings] = []
    models: dict[str, GatewayModelSettings] = {}
    rules: list[GatewayRuleSettings] = []
    retry: GatewayRetrySettings = GatewayRetrySettings()
    breaker: GatewayBreakerSettings = GatewayBreakerSettings()
    health: GatewayHealthSettings = GatewayHealthSettings()
    #: Per-request deadline over every attempt and fallback (a request may lower it with the
    #: `x-ragline-timeout` header, in seconds).
    deadline_s: float = Field(120.0, gt=0.0)

    @model_validator(mode="after")
    def _check_references(self) -> GatewaySettings:
        names = [d.name for d in self.deployments]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"deployment names must be unique; repeated: {', '.join(dupes)}")
        known = ", ".join(names) or "(none defined under gateway.deployments)"
        for model, m in self.models.items():
            if model.startswith("rag/"):
                raise ValueError(f"model '{model}': names starting with rag/ are reserved for collections")
            for d in m.deployments:
                if d not in names:
                    raise ValueError(f"model '{model}' references unknown deployment '{d}'; defined: {known}")
            for f in m.fallbacks:
                if f not in self.models:
                    raise ValueError(
                        f"model '{model}' falls back to unknown model '{f}'; define it under gateway.models"
                    )
                if f == model:
                    raise ValueError(f"model '{model}' lists itself as a fallback")
        virtual: dict[str, bool] = {}
        for i, r in enumerate(self.rules):
            if r.group not in self.models:
                raise ValueError(
                    f"rules[{i}] routes to unknown model group '{r.group}'; define it under gateway.models"
                )
            if r.model is not None and r.model not in self.models:
                if r.model.startswith("rag/"):
                    raise ValueError(
                        f"rules[{i}]: model names starting with rag/ are reserved for collections"
                    )
                virtual[r.model] = virtual.get(r.model, False) or r.is_default()
        for name, has_default in virtual.items():
            if not has_default:
                raise ValueError(
                    f"virtual model '{name}' has no default: add a last rule with model: {name}, "
                    "no conditions and the group to use otherwise"
                )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGLINE_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(default_factory=_default_data_dir)
    default_collection: str = "default"
    embedder: EmbedderSettings = EmbedderSettings()
    llm: LLMSettings = LLMSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    ingest: IngestSettings = IngestSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    answer: AnswerSettings = AnswerSettings()
    server: ServerSettings = ServerSettings()
    rerank: RerankSettings = RerankSettings()
    gateway: GatewaySettings = GatewaySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats explicit (file) values, as operators expect.
        return (env_settings, init_settings)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from an optional YAML file, the environment and overrides.

    Raises ConfigError with one line per problem, naming the field to fix.
    """
    data: dict[str, Any] = {}
    if path is None and os.environ.get("RAGLINE_CONFIG"):
        path = os.environ["RAGLINE_CONFIG"]
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from e
