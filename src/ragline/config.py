"""One typed settings object, read from a YAML file and RAGLINE_* environment variables.

Environment variables override the file; nested fields use a double underscore,
e.g. ``RAGLINE_CHUNKING__CHUNK_TOKENS=200``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
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


class _Section(BaseModel):
    """A settings section: unknown keys are errors, and each field's docstring is its description."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ragline"


class EmbedderSettings(_Section):
    kind: Literal["minilm", "onnx_dir"] = "minilm"
    path: Path | None = None
    """For kind=onnx_dir: a directory holding model.onnx (or *.onnx) and tokenizer.json."""
    max_tokens: int = Field(
        256, ge=16, le=8192, description="word pieces the model reads, incl. special tokens"
    )
    batch_size: int = Field(32, ge=1, le=1024)
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 = all cores")
    normalize: bool = True
    query_prefix: str = ""
    """Text placed before queries / passages (e5/bge-style models need one)."""
    passage_prefix: str = ""


class LLMSettings(_Section):
    kind: Literal["smollm2", "gguf"] = "smollm2"
    path: Path | None = None
    """For kind=gguf: a path to any GGUF file."""
    n_ctx: int = Field(4096, ge=256)
    n_parallel: int = Field(4, ge=1, le=64, description="llama.cpp slots (continuous batching)")
    threads: int = Field(0, ge=0, description="llama.cpp threads; 0 = half the cores (at least 1)")
    threads_batch: int = Field(0, ge=0)
    """Threads for prompt prefill: large batches, where every core pays off (on 2 cores, time to
    first token 0.85 s with 2 vs 1.37 s with 1; bench/rag_answers.py --threads-batch); 0 = all cores.
    """
    max_tokens: int = Field(256, ge=1)
    """Default completion budget of chat requests that do not set max_tokens."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int = 42
    dry_multiplier: float = Field(0.8, ge=0.0, le=5.0)
    """llama.cpp's DRY sampler: penalises repeating a sequence the output already holds (small
    models loop); the default for requests that do not set it. 0 = off.
    """


class ChunkingSettings(_Section):
    chunk_tokens: int = Field(128, ge=16)
    """Content tokens per chunk (word pieces of the embedding model). Clamped so the
    chunk plus its title/section header never exceeds what the embedder reads. 128 with a
    48-token lexical context measured best over five judged sets (docs/BENCHMARKS.md).
    """
    overlap_tokens: int = Field(32, ge=0)
    max_header_tokens: int = Field(48, ge=0)
    """Reserve at most this many tokens of the budget for the title/section header."""
    lexical_context_tokens: int = Field(48, ge=0, le=4096)
    """BM25 indexes each chunk widened by this many tokens of its section on each side (the
    dense vector still covers the chunk alone): small chunks suit the embedder, wider text
    suits BM25's term statistics. 0 = BM25 sees exactly the chunk.
    """
    lexical_title_weight: int = Field(1, ge=1, le=8)
    """How many times the document title counts in what BM25 indexes for each chunk (1 = once,
    in the header; 2 = twice: a title match weighs more than a match in the body).
    """

    @field_validator("overlap_tokens")
    @classmethod
    def _overlap_lt_chunk(cls, v: int, info: Any) -> int:
        size = info.data.get("chunk_tokens", 128)
        if v >= size:
            raise ValueError(f"overlap_tokens ({v}) must be smaller than chunk_tokens ({size})")
        return v


class IngestSettings(_Section):
    max_file_bytes: int = Field(50 * 1024 * 1024, ge=1)
    near_duplicate_threshold: float = Field(0.9, gt=0.0, le=1.0, description="MinHash Jaccard threshold")
    near_duplicate_detection: bool = True
    minhash_permutations: int = Field(128, ge=16, le=1024)
    upsert_batch: int = Field(256, ge=1)
    max_unpacked_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1024,
        description="a DOCX's uncompressed size (the sum of its zip members, checked before any is read) "
        "and the text a PDF yields; a file over it is failed, never loaded whole",
    )
    max_archive_members: int = Field(10_000, ge=1, description="zip members a DOCX may hold")
    max_xml_elements: int = Field(
        1_000_000, ge=1, description="XML elements in a DOCX's parts, and HTML elements in a page"
    )
    max_pdf_pages: int = Field(
        2000, ge=1, description="pages of a PDF (a page object listed twice in the page tree counts once)"
    )
    max_chunks_per_document: int = Field(10_000, ge=1, description="chunks one document may become")
    on_limit: Literal["fail", "truncate"] = Field(
        "fail",
        description="a document over max_pdf_pages or max_chunks_per_document: 'fail' reports it as failed "
        "with the reason; 'truncate' keeps the first pages/chunks and reports a warning. Archives over "
        "max_unpacked_bytes, max_archive_members or max_xml_elements always fail",
    )
    parse_isolation: Literal["inline", "process"] = Field(
        "inline",
        description="where ragline ingest and the Python API parse files: 'inline' in the calling "
        "thread, 'process' in parser worker processes under parse_memory_bytes and parse_timeout_s. "
        "The server's uploads are always parsed in worker processes",
    )
    parse_workers: int = Field(2, ge=1, le=64, description="parser worker processes at most (parses at once)")
    parse_memory_bytes: int = Field(
        2 * 1024 * 1024 * 1024,
        ge=0,
        description="address space (RLIMIT_AS) of each parser worker process; a file that needs more "
        "fails with the reason; 0 = no cap",
    )
    parse_timeout_s: float = Field(
        300.0,
        ge=0,
        description="wall-clock seconds one file may take to parse in a worker process; a file that "
        "takes longer fails with the reason and its parser is killed; 0 = no limit",
    )


class CollectionSettings(_Section):
    max_open: int = Field(
        64,
        ge=1,
        description="collections held open at once; the least recently used idle one is closed past it "
        "(lowered further when the file descriptor limit is low)",
    )
    max_count: int = Field(
        1000, ge=1, description="collections in the data directory; creating one more is refused"
    )
    max_per_tenant: int = Field(
        100,
        ge=1,
        description="collections of one tenant (the default tenant's included); creating one more is "
        "refused, so no tenant can take every slot of max_count",
    )
    search_threads: int = Field(
        2, ge=1, le=64, description="threads of each open collection's search pool (the Qdrant engine's)"
    )


class IndexSettings(_Section):
    """The vector index every collection lives in: the embedded engine, or Qdrant."""

    kind: Literal["edge", "qdrant"] = Field(
        "edge",
        description="edge = the embedded Qdrant engine, one shard in each collection's folder; qdrant = a "
        "Qdrant server or cluster (url) or qdrant-client's local mode (path), one Qdrant collection per "
        "ragline collection (pip install 'ragline[qdrant]').",
    )
    url: str | None = Field(
        None, description="kind=qdrant: the server, e.g. http://qdrant:6333 (null = local mode at path)"
    )
    api_key: SecretStr | None = None
    """kind=qdrant with url: the server's API key (masked by `config show`, never logged)."""
    path: str | None = Field(
        None,
        description="kind=qdrant without url: the folder of qdrant-client's local mode (in-process, "
        "exact search, for tests and small data); null = <data_dir>/qdrant; :memory: = in memory only",
    )
    collection_prefix: str = Field(
        "",
        max_length=64,
        pattern=r"^[A-Za-z0-9_.\-]*$",
        description="kind=qdrant: put before each collection's name in Qdrant, so that several deployments "
        "can share one server",
    )
    timeout_s: float = Field(30.0, gt=0.0, description="kind=qdrant with url: each request to the server")

    @field_validator("url")
    @classmethod
    def _url_port(cls, v: str | None) -> str | None:
        return _check_port(v)

    @model_validator(mode="after")
    def _one_location(self) -> IndexSettings:
        if self.kind == "edge" and (self.url or self.api_key or self.path):
            raise ValueError("kind edge takes no url, api_key or path (they are for kind qdrant)")
        if self.url and self.path:
            raise ValueError("give url (a Qdrant server) or path (local mode), not both")
        if self.api_key and not self.url:
            raise ValueError("api_key is for a Qdrant server: give its url too")
        return self


class RetrievalSettings(_Section):
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    top_k: int = Field(5, ge=1, le=1000)
    fusion: Literal["rrf", "convex"] = "convex"
    """Defaults: the configuration with the best mean nDCG@10 over five judged sets (SciFact,
    NFCorpus, Cranfield, XQuAD, COVID-QA) that also beats the better single retriever on each;
    see docs/BENCHMARKS.md "Retrieval quality".
    """
    rrf_k: int = Field(10, ge=1)
    """The k of RRF (the best k measured for fusion=rrf)."""
    convex_alpha: float = Field(0.5, ge=0.0, le=1.0)
    """Weight of the dense retriever in convex fusion (BM25 gets 1 - alpha)."""
    normalization: Literal["minmax", "dbsf"] = "minmax"
    """How convex fusion puts each list's scores on one scale: "minmax" ([min, max] -> [0, 1]) or
    "dbsf" ([mean - 3 sd, mean + 3 sd] -> [0, 1], distribution-based score fusion).
    """
    candidates: int = Field(100, ge=1, le=10000)
    """Candidates each retriever contributes before fusion."""
    hnsw_ef: int = Field(128, ge=4)
    prf_docs: int = Field(3, ge=0, le=20)
    """Dense pseudo-relevance feedback in hybrid mode: the top ``prf_docs`` documents of the
    first fused ranking move the query vector (q + prf_beta * their mean); 0 = off.
    """
    prf_beta: float = Field(1.0, ge=0.0, le=10.0)
    prf_mode: Literal["rescore", "search"] = "rescore"
    """How the expanded query is used: "rescore" the first-stage candidates (dense and BM25) by
    their stored vectors (no second index search), or "search" the dense index again (may
    find chunks neither first list held; costs a second HNSW search).
    """
    bm25_k: float = Field(1.2, ge=0.0)
    """BM25 parameters (the engine's built-in BM25, Snowball English stemmer)."""
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)
    bm25_avg_len: float = Field(
        120.0, gt=0.0, description="expected tokens per chunk after stop-word removal"
    )


def _check_port(url: str | None) -> str | None:
    """Refuse a URL whose port is not a number (the message does not repeat the URL: it may hold a
    password)."""
    if url is not None and "://" in url:
        try:
            _ = urlsplit(url).port  # parsed only when read
        except ValueError:
            raise ValueError(
                "the port in this URL is not a number from 0 to 65535 (a password holding '/', '?', "
                "'#' or '@' must be percent-encoded, e.g. %2F for '/')"
            ) from None
    return url


class RerankSettings(_Section):
    """Optional second stage: rerank the fused ``candidates`` down to top_k."""

    kind: Literal["none", "onnx", "remote"] = "none"
    path: Path | None = None
    """kind=onnx: a directory with a cross-encoder model.onnx and its tokenizer.json."""
    max_tokens: int = Field(512, ge=16)
    url: str | None = None
    """kind=remote: the rerank endpoint (Cohere/Jina/TEI-style), e.g. http://host:8080/rerank."""
    model: str = ""
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(10.0, gt=0)
    candidates: int = Field(50, ge=1, le=1000)
    """How many first-stage hits are reranked (then cut to top_k)."""

    @field_validator("url")
    @classmethod
    def _url_port(cls, v: str | None) -> str | None:
        return _check_port(v)


class ServerToolSettings(_Section):
    """A tool that ragline runs itself in an ``agentic`` answer: the model's arguments are POSTed
    as JSON to ``url``, and the response body (cut to ``max_output_chars``) is the tool's result."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    """The arguments' JSON Schema (OpenAI's ``function.parameters``)."""
    url: str
    """http(s) URL the arguments are POSTed to."""
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    """Sent with each call (an ``Authorization`` header, say); never logged or returned."""
    requires_approval: bool = False
    """Pause the run at a call to this tool until the caller approves or rejects it."""
    timeout_s: float = Field(10.0, gt=0.0, le=300.0)
    max_output_chars: int = Field(4000, ge=1, le=100_000)

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, v: str) -> str:
        if v in ("search", "answer"):
            raise ValueError(f"'{v}' is a built-in tool of agentic answers; choose another name")
        return v

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        url = urlsplit(v)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"'{v}' is not an http(s) URL")
        _check_port(v)
        return v

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        from ragline.server.chat_checks import schema_problem  # the check chat requests' tools get

        if (problem := schema_problem(v)) is not None:
            raise ValueError(f"not a JSON Schema: {problem}")
        if v.get("type", "object") != "object":
            raise ValueError("a tool's parameters must be an object schema")
        return v


class AgentSettings(_Section):
    """``agentic`` answers: the model may search again with a rewritten question (the ``search``
    tool) or call the server tools below, for up to ``max_steps`` steps, before the answer is
    written from the sources of every step."""

    max_steps: int = Field(3, ge=1, le=10)
    """Model decisions after the first search (each a search, a tool call or the answer)."""
    top_k: int = Field(3, ge=1, le=20)
    """Chunks each search adds."""
    step_max_tokens: int = Field(96, ge=16, le=1024)
    """Tokens a step's decision (one tool call as JSON) may take."""
    run_ttl_s: float = Field(3600.0, gt=0.0)
    """How long a paused run (waiting for an approval or a tool's output) is kept."""
    tools: list[ServerToolSettings] = Field(default_factory=list)

    @field_validator("tools")
    @classmethod
    def _unique(cls, v: list[ServerToolSettings]) -> list[ServerToolSettings]:
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError("answer.agent.tools: tool names must be unique")
        return v


class AnswerSettings(_Section):
    mode: Literal["generate", "extractive", "agentic"] = "generate"
    top_k: int = Field(3, ge=1, le=50)
    context_tokens: int = Field(900, ge=64, description="token budget for the numbered sources")
    min_relevance: float = Field(0.27, ge=-1.0, le=1.0)
    """Cosine similarity (query vs. best chunk) below which nothing is relevant enough. MiniLM
    gives on-topic questions about ragline's docs >= 0.30 and off-topic ones <= 0.24.
    """
    extractive_sentences: int = Field(3, ge=1, le=20)
    context_sentences: int = Field(4, ge=0, le=50)
    """Generate mode shows the model only the sources' sentences most similar to the question,
    this many in all (a small model copies what it sees); 0 = the whole chunks.
    """
    max_tokens: int = Field(96, ge=1, le=4096)
    """New tokens a generated answer may take. The prompt asks for one or two sentences (mean
    44 tokens on XQuAD); the cap cuts the small model's occasional run-on, which sets the P95
    latency (96: P95 2.3 s, same F1 and citation precision as 256).
    """
    agent: AgentSettings = AgentSettings()
    source_window: bool = True
    """Build answers from each source's window (the chunk plus ``chunking.lexical_context_tokens``
    of its section on either side, stored at ingestion) instead of the chunk alone: search
    ranks small chunks, the model reads, and citations point at, the wider text.
    """


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    local_model: str = Field("local", min_length=1)
    """The name clients use for the embedded local LLM."""
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    embedding_batch_max_size: int = Field(64, ge=1, le=4096)
    """Dynamic batching of /v1/embeddings: texts per model call, and how long the oldest waits for more."""
    embedding_batch_max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    embedding_batch_max_tokens: int = Field(
        4096,
        ge=1,
        description="/v1/embeddings batches: estimated tokens per model call (characters / 4 + 2 per "
        "input, at most embedder.max_tokens); a batch takes at least one input",
    )
    max_embedding_inputs: int = Field(
        2048, ge=1, le=100_000, description="/v1/embeddings: input strings per request"
    )
    max_embedding_tokens: int = Field(
        65_536,
        ge=1,
        description="/v1/embeddings: tokens per request, each input counted as the model reads it "
        "(at most embedder.max_tokens)",
    )
    max_embedding_input_chars: int = Field(
        32_768, ge=1, description="/v1/embeddings: characters per input string"
    )
    max_messages: int = Field(2048, ge=1, description="chat completions: messages per request")
    max_prompt_tokens: int = Field(
        131_072,
        ge=1,
        description="chat completions: prompt tokens per request, estimated as characters / 4 "
        "(the local model's context, llm.n_ctx, also bounds its prompts and max_tokens)",
    )
    max_query_chars: int = Field(
        4096, ge=1, description="characters of a search query or of a rag/<collection> question"
    )
    max_search_top_k: int = Field(100, ge=1, le=1000, description="top_k of one search request")
    max_filters: int = Field(32, ge=0, description="metadata filters of one search or rag request")
    max_running_ingest_jobs: int = Field(
        2, ge=1, le=64, description="upload (ingest) jobs running at once; more wait in the queue"
    )
    max_running_async_jobs: int = Field(
        4, ge=1, le=256, description="async chat completion jobs running at once; more wait in the queue"
    )
    max_queued_jobs: int = Field(
        64, ge=0, description="jobs waiting to run; a job submitted past it gets 429 with Retry-After"
    )
    max_jobs_per_key: int = Field(16, ge=1, description="unfinished jobs one API key may hold")
    max_job_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="an async job's request body and its stored result; a larger body gets 413, a larger "
        "result fails the job",
    )
    job_timeout_s: float = Field(
        3600.0, ge=0.0, description="a running job is cancelled after this long; 0 = no limit"
    )
    job_ttl_s: float = Field(
        3600.0, gt=0.0, description="finished jobs are forgotten this long after they end"
    )
    max_finished_jobs: int = Field(1000, ge=1, description="finished jobs kept at most (the oldest go first)")
    max_finished_job_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="finished jobs' stored results kept at most, in bytes of JSON all together (the oldest "
        "jobs go first)",
    )
    max_connections: int = Field(1024, ge=1, description="open client connections; one more is answered 503")
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request line and headers of one request; over it: 431"
    )
    max_header_count: int = Field(100, ge=1, description="headers of one request; over it: 431")
    header_timeout_s: float = Field(
        10.0, gt=0.0, description="a client must send a whole request head within this (else 408 and close)"
    )
    body_timeout_s: float = Field(
        60.0, gt=0.0, description="a request body must arrive whole within this after its head (else close)"
    )
    keepalive_timeout_s: float = Field(
        5.0, gt=0.0, description="an idle keep-alive connection is closed after this"
    )
    max_requests_per_connection: int = Field(
        1000, ge=1, description="requests served on one keep-alive connection before it is closed"
    )
    shutdown_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="on SIGTERM: how long in-flight requests may finish before they are cut off "
        "(new connections are refused at once; running jobs are cancelled)",
    )


# -- gateway ----------------------------------------------------------------------------

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$"


class GatewayTimeouts(_Section):
    connect_s: float = Field(5.0, gt=0.0, description="TCP/TLS connect to the upstream")
    first_token_s: float = Field(60.0, gt=0.0, description="request sent -> first streamed chunk")
    total_s: float = Field(600.0, gt=0.0, description="whole upstream call")


class GatewayDeploymentSettings(_Section):
    """One place a model runs: the embedded local model, or an OpenAI-compatible server."""

    name: str = Field(pattern=_NAME_PATTERN, description="unique; used in metrics and logs")
    kind: Literal["local", "openai"] = "openai"
    base_url: str | None = None
    """For kind=openai: the API root, e.g. http://10.0.0.5:8000/v1
    (requests go to {base_url}/chat/completions, probes to {base_url}/models).
    """
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    """Name of an environment variable holding the API key (read at start-up)."""
    model: str | None = None
    """The upstream's model id (the request's `model` is rewritten to it); for kind=local the
    name the answers carry (default "local").
    """
    weight: float = Field(1.0, gt=0.0, description="share of traffic under strategy=weighted")
    timeouts: GatewayTimeouts = GatewayTimeouts()
    max_connections: int = Field(100, ge=1, le=10000, description="pooled connections to this upstream")
    health_check: bool = True
    """Take part in active health probes (GET {base_url}/models)."""

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
            try:
                _check_port(self.base_url)
            except ValueError as e:
                raise ValueError(f"deployment '{self.name}': base_url: {e}") from None
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


class GatewayModelSettings(_Section):
    """A model name clients send, served by a group of deployments."""

    deployments: list[str] = Field(min_length=1)
    strategy: Literal["round_robin", "least_in_flight", "weighted", "lowest_latency"] = "round_robin"
    fallbacks: list[str] = []
    """Model names tried in order when every deployment of this one is down, open or failed."""
    max_tokens: int | None = Field(None, ge=1)
    """The largest completion budget (``max_tokens``) a request to this model may ask for, e.g. its
    context length; a request over it is refused with a 400 before any upstream call. Unset: the
    upstream decides."""


class GatewayRuleSettings(_Section):
    """Route a request to a model group by task type, prompt size or cost tier (first match wins).

    Conditions given together must all hold; a rule with no condition matches everything
    (use it last, as the default of a virtual model such as ``auto``).
    """

    model: str | None = None
    """The requested model name the rule applies to; unset = every gateway model. A name that
    is not under `models` becomes a virtual model (listed by /v1/models).
    """
    task: list[str] | None = None
    """Values of the `x-ragline-task` request header."""
    tier: list[str] | None = None
    """Values of the `x-ragline-tier` request header."""
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=0)
    min_tokens: int | None = Field(None, ge=0)
    """Prompt tokens, estimated as characters / 4."""
    max_tokens: int | None = Field(None, ge=0)
    group: str
    """The model group (a name under `models`) to send matching requests to."""

    def is_default(self) -> bool:
        return all(
            v is None
            for v in (self.task, self.tier, self.min_chars, self.max_chars, self.min_tokens, self.max_tokens)
        )


class GatewayRetrySettings(_Section):
    max_attempts: int = Field(3, ge=1, le=10)
    """Attempts per model group, the first included (connect errors, 429 and 5xx are retried)."""
    backoff_base_s: float = Field(0.1, ge=0.0, description="full jitter: sleep U(0, min(max, base*2^n))")
    backoff_max_s: float = Field(5.0, ge=0.0)
    max_retry_after_s: float = Field(30.0, ge=0.0)
    """A Retry-After longer than this is not waited for (the deployment is skipped instead)."""


class GatewayBreakerSettings(_Section):
    consecutive_failures: int = Field(5, ge=1, description="open after this many failures in a row")
    failure_rate: float = Field(0.5, gt=0.0, le=1.0, description="or this share of the window failing")
    window: int = Field(20, ge=1, description="outcomes remembered for failure_rate")
    min_requests: int = Field(10, ge=1, description="outcomes needed before failure_rate applies")
    cooldown_s: float = Field(30.0, gt=0.0, description="open -> half-open (one probe request) after this")


class GatewayHealthSettings(_Section):
    interval_s: float = Field(10.0, ge=0.0, description="active probe period; 0 disables active probes")
    timeout_s: float = Field(2.0, gt=0.0)
    unhealthy_after: int = Field(2, ge=1, description="failed probes in a row that take it out of rotation")
    healthy_after: int = Field(1, ge=1, description="good probes in a row that bring it back")
    passive_failures: int = Field(3, ge=1)
    """Connect failures in a row on real traffic that take a probed deployment out until a probe succeeds."""


class GatewaySettings(_Section):
    """The LLM gateway: deployments, the model names that route to them, and resilience knobs."""

    deployments: list[GatewayDeploymentSettings] = []
    models: dict[str, GatewayModelSettings] = {}
    max_tokens: int = Field(
        262_144,
        ge=1,
        description="the largest max_tokens a request to a gateway model may ask for when the model "
        "sets no max_tokens of its own (gateway.models.<name>.max_tokens); above it: 400 before any "
        "upstream call",
    )
    rules: list[GatewayRuleSettings] = []
    retry: GatewayRetrySettings = GatewayRetrySettings()
    breaker: GatewayBreakerSettings = GatewayBreakerSettings()
    health: GatewayHealthSettings = GatewayHealthSettings()
    deadline_s: float = Field(120.0, gt=0.0)
    """Per-request deadline over every attempt and fallback (a request may lower it with the
    `x-ragline-timeout` header, in seconds).
    """

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


# -- access control: keys, stores, shared state, rate limits, prices, spend --------------------------


def _check_rate(value: str | None) -> str | None:
    """A rate limit in the ``limits`` library's notation: ``60/minute``, ``1000 per hour``, ``10/second``."""
    if value is None:
        return None
    from limits import parse

    try:
        parse(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate limit; write e.g. '60/minute', '1000/hour' or '10 per second'"
        ) from None
    return value


class AuthSettings(_Section):
    """API keys: the bootstrap admin key, cached key lookups and failed-authentication limits."""

    admin_key_file: Path | None = Field(
        None,
        description="a file holding the bootstrap admin key (one line); the environment variable "
        "RAGLINE_ADMIN_KEY wins over it. At least 32 characters",
    )
    default_tenant: str = Field(
        "default",
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$",
        description="the tenant of the bootstrap admin key and of the embedded single-user setup",
    )
    key_cache_size: int = Field(100_000, ge=1, description="key lookups held in each process's cache")
    key_cache_ttl_s: float = Field(
        60.0, gt=0.0, description="a cached key lookup is read again from the store after this long at most"
    )
    revision_poll_s: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="how often each process asks the store whether any key or tenant changed (then it "
        "drops its cache), so a revocation takes effect everywhere within this; with Redis (state.url) "
        "changes are also pushed at once",
    )
    failed_per_ip: str | None = Field(
        "20/minute",
        description="failed authentications allowed per client IP (limits notation); past it the IP gets "
        "429 until the window frees up, even with a valid key. null = unlimited",
    )

    metrics: Literal["open", "admin"] = Field(
        "admin",
        description="who may read /metrics once keys are in use: admin (an admin key, e.g. in the "
        "scraper's bearer_token) or open (anyone who can reach the port). While the server runs open "
        "(no keys, on loopback) it is open either way",
    )

    @field_validator("failed_per_ip")
    @classmethod
    def _valid_rate(cls, v: str | None) -> str | None:
        return _check_rate(v)


class StoreSettings(_Section):
    """The record store (tenants, keys, budgets, spend): SQLite under data_dir, or PostgreSQL."""

    url: str | None = Field(
        None,
        description="null = <data_dir>/records.sqlite; sqlite:////abs/path.sqlite for another file; "
        "postgresql://user:password@host:5432/db for a database that every replica shares "
        "(pip install 'ragline[postgres]')",
    )
    pool_min: int = Field(1, ge=0, description="PostgreSQL: connections each process keeps open")
    pool_max: int = Field(10, ge=1, le=1000, description="PostgreSQL: connections each process opens at most")
    connect_timeout_s: float = Field(
        10.0,
        gt=0.0,
        description="PostgreSQL: connecting, or waiting for a pooled connection; SQLite: waiting for a lock",
    )

    @field_validator("url")
    @classmethod
    def _url_port(cls, v: str | None) -> str | None:
        return _check_port(v)


class StateSettings(_Section):
    """Shared state (rate-limit counters, invalidation messages): in-process, or Redis for replicas."""

    url: str | None = Field(
        None,
        description="null = in this process only; redis://host:6379/0 (or rediss:// for TLS) to share "
        "counters across replicas exactly (pip install 'ragline[redis]')",
    )
    key_prefix: str = Field(
        "ragline", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$", description="prefix of every Redis key"
    )

    @field_validator("url")
    @classmethod
    def _url_port(cls, v: str | None) -> str | None:
        return _check_port(v)


class RateLimitSettings(_Section):
    requests: str | None = Field(None, description="requests per window, e.g. 60/minute; null = unlimited")
    tokens: str | None = Field(
        None,
        description="tokens per window, e.g. 100000/minute (prompt tokens counted before the call, "
        "completion tokens after it); null = unlimited",
    )

    @field_validator("requests", "tokens")
    @classmethod
    def _valid_rate(cls, v: str | None) -> str | None:
        return _check_rate(v)


class LimitsSettings(_Section):
    """Rate limits; a key's or tenant's own limits (set with `ragline keys` / `tenants`) win over these."""

    strategy: Literal["moving-window", "sliding-window-counter", "fixed-window"] = Field(
        "sliding-window-counter",
        description="the limits library's algorithm: sliding-window-counter (constant memory, the "
        "previous window weighted), moving-window (exact over any span, memory per request), "
        "fixed-window (resets on window boundaries).",
    )
    per_key: RateLimitSettings = Field(RateLimitSettings(), description="each API key")
    per_tenant: RateLimitSettings = Field(
        RateLimitSettings(), description="each tenant, all its keys together"
    )
    per_ip: RateLimitSettings = Field(RateLimitSettings(), description="each client IP address")
    overall: RateLimitSettings = Field(RateLimitSettings(), description="every request together")


class ModelPrice(_Section):
    input_per_million: float = Field(0.0, ge=0.0, description="USD per million prompt tokens")
    output_per_million: float = Field(0.0, ge=0.0, description="USD per million completion tokens")


class PricesSettings(_Section):
    """What a request costs: a deployment's price wins over its model's, which wins over the default."""

    default: ModelPrice = Field(
        ModelPrice(), description="models and deployments not listed (the local model: free unless set)"
    )
    models: dict[str, ModelPrice] = Field({}, description="price per model name clients send")
    deployments: dict[str, ModelPrice] = Field({}, description="price per gateway deployment name")


class SpendSettings(_Section):
    """Budget reservations and the spend log, written in batches off the request path."""

    batch_size: int = Field(500, ge=1, description="settlements and spend records written in one transaction")
    max_pending: int = Field(
        100_000,
        ge=1,
        description="spend records waiting to be written while the store is slow or down; past it the "
        "oldest are dropped (and counted); settlements are never dropped",
    )
    reservation_ttl_s: float = Field(
        900.0,
        gt=0.0,
        description="a budget reservation never settled (its process died) is released after this",
    )
    sweep_interval_s: float = Field(60.0, gt=0.0, description="how often expired reservations are released")
    assumed_max_tokens: int = Field(
        4096,
        ge=1,
        description="the completion tokens reserved for a request that gives no max_tokens when a budget "
        "applies to it (and passed on as its max_tokens, so it cannot cost more than was reserved); a "
        "model's own cap (gateway.models.<name>.max_tokens, the local model's context) wins when lower",
    )


class SemanticCacheSettings(_Section):
    """Answers for questions that mean the same as one answered before (nearest stored question)."""

    rag: bool = Field(
        True, description="rag/<collection> answers (and extra_body.rag) are matched semantically"
    )
    models: list[str] = Field(
        [],
        description="chat models (local or gateway names) whose answers are matched semantically too; "
        "opt-in, since a chat model's answer may depend on wording a RAG answer does not",
    )
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="cosine similarity of the two questions' embeddings a hit needs; null = the "
        "measured default (cache/match.py, docs/BENCHMARKS.md 'Semantic cache precision')",
    )
    check: bool = Field(
        True,
        description="the second check between similar and hit: numbers, negations, named entities "
        "and content words that differ veto a hit",
    )
    rag_sources: bool = Field(
        True,
        description="a semantic hit of a RAG answer also needs the new question's retrieval to find "
        "the chunks the answer was built from (one retrieval, no generation)",
    )


class CacheSettings(_Section):
    """The response cache: exact (hash of the normalised request) and semantic, scoped per tenant."""

    enabled: bool = Field(True, description="false = no response is looked up or stored")
    store: Literal["auto", "memory", "redis"] = Field(
        "auto",
        description="where entries are kept: memory (this process), redis (shared by every replica, in "
        "the state.url server), auto = redis when state.url is set, else memory",
    )
    ttl_s: float = Field(3600.0, gt=0.0, description="an entry is served for at most this long")
    max_entries: int = Field(
        10_000, ge=1, description="entries kept in this process; past it the least recently used go"
    )
    max_entry_bytes: int = Field(
        1_048_576, ge=1024, description="responses larger than this (encoded) are not stored"
    )
    sampled: bool = Field(
        False,
        description="also cache requests that sample (temperature > 0 without a seed); a request opts "
        "in on its own with extra_body cache: force",
    )
    semantic: SemanticCacheSettings = Field(SemanticCacheSettings(), description="semantic matching")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAGLINE_", env_nested_delimiter="__", extra="forbid", use_attribute_docstrings=True
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    default_collection: str = "default"
    embedder: EmbedderSettings = EmbedderSettings()
    llm: LLMSettings = LLMSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    ingest: IngestSettings = IngestSettings()
    collections: CollectionSettings = CollectionSettings()
    index: IndexSettings = IndexSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    answer: AnswerSettings = AnswerSettings()
    server: ServerSettings = ServerSettings()
    rerank: RerankSettings = RerankSettings()
    gateway: GatewaySettings = GatewaySettings()
    auth: AuthSettings = AuthSettings()
    store: StoreSettings = StoreSettings()
    state: StateSettings = StateSettings()
    limits: LimitsSettings = LimitsSettings()
    prices: PricesSettings = PricesSettings()
    spend: SpendSettings = SpendSettings()
    cache: CacheSettings = CacheSettings()

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


#: RAGLINE_* environment variables that are not settings (read by ragline itself or its tests).
NON_SETTING_ENV = frozenset({"RAGLINE_CONFIG", "RAGLINE_SHARED_DATA", "RAGLINE_ADMIN_KEY"})


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds, directly or as list/dict items (None for a plain value)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The settings model that the keys at ``loc`` belong to (``()`` is the top level)."""
    model: type[BaseModel] = Settings
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:
            continue  # a list index or a dict key (e.g. a model name under gateway.models)
        inner = _section_type(model.model_fields[part].annotation)
        if inner is None:
            return None
        model = inner
    return model


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key.lower(), list(valid), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _env_setting_names(model: type[BaseModel] = Settings, prefix: str = "RAGLINE_") -> dict[str, None]:
    """The variables that set ``model``'s fields (and its sections' fields), named from ``prefix``."""
    names: dict[str, None] = {}
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        names[env] = None
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            names.update(_env_setting_names(inner, env + "__"))
    return names


def _dict_values(annotation: Any) -> tuple[bool, type[BaseModel] | None]:
    """Whether a field holds a dict (directly or in an Optional), and the settings model of its values."""
    if get_origin(annotation) is dict:
        args = get_args(annotation)
        return True, _section_type(args[1]) if len(args) == 2 else None
    for arg in get_args(annotation):
        if get_origin(arg) is dict:
            return _dict_values(arg)
    return False, None


def _env_hint(name: str) -> str | None:
    """None when the variable ``name`` (upper case, ``RAGLINE_...``) sets a setting, else a hint.

    Walks the name's ``__``-separated parts down the settings model the way pydantic-settings
    reads them: a section's field, or any key under a dict-valued field (``gateway.models``,
    ``prices.models``) followed by a field of the dict's value model. A name may stop at any
    field: a section, dict or list is then set whole, as JSON. The hint names the closest
    variable at the level where the name went wrong (``; did you mean RAGLINE_...?``), or is empty.
    """
    parts = name[len("RAGLINE_") :].split("__")
    model: type[BaseModel] = Settings
    at = "RAGLINE_"  # where the names of ``model``'s fields start
    i = 0
    while True:
        field = {n.upper(): f for n, f in model.model_fields.items()}.get(parts[i])
        if field is None:
            break
        i += 1
        if i == len(parts):
            return None
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model, at = sub, f"{at}{parts[i - 1]}__"
            continue
        is_dict, values = _dict_values(sub)
        if not is_dict or values is None or not parts[i]:
            break  # a plain value or a list has no fields of its own
        i += 1  # the entry's key: any name (a model, a deployment)
        if i == len(parts):
            return None
        model, at = values, f"{at}{parts[i - 2]}__{parts[i - 1]}__"
    valid = list(_env_setting_names(model, at))
    rest = "__".join(parts[i + 1 :])
    if field is None and rest:  # a misspelt dict field: keep what follows (RAGLINE_PRICES__MODEL__GPT4__...)
        valid.extend(
            f"{at}{n.upper()}__{rest}" for n, f in model.model_fields.items() if _dict_values(f.annotation)[0]
        )
    if model is Settings:
        valid.extend(sorted(NON_SETTING_ENV))
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def unknown_env_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One message per RAGLINE_* variable that names no setting, with the closest valid name."""
    env = os.environ if environ is None else environ
    problems = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith("RAGLINE_") or upper in NON_SETTING_ENV:
            continue
        hint = _env_hint(upper)
        if hint is not None:
            problems.append(f"  environment variable {name}: no such setting{hint}")
    return problems


def _describe(err: Any) -> str:
    loc: tuple[str | int, ...] = tuple(err["loc"])
    where = ".".join(str(x) for x in loc)
    if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
        model = _model_at(loc[:-1])
        if model is not None:
            return f"  {where}: unknown setting{_suggest(loc[-1], list(model.model_fields))}"
    return f"  {where}: {err['msg']}"


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from an optional YAML file, the environment and overrides.

    Raises ConfigError with one line per problem, naming the field to fix; an unknown or
    misspelt key (in the file, the overrides or a ``RAGLINE_*`` variable) names the closest
    valid one.
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
    problems = unknown_env_settings()
    try:
        settings = Settings(**data)
    except ValidationError as e:
        problems.extend(_describe(err) for err in e.errors())
    if problems:
        raise ConfigError("invalid settings:\n" + "\n".join(dict.fromkeys(problems)))
    return settings
