"""One typed settings object, read from a YAML file and RAGLINE_* environment variables.

Environment variables override the file; nested fields use a double underscore,
e.g. ``RAGLINE_CHUNKING__CHUNK_TOKENS=200``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
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
    threads: int = Field(0, ge=0, description="0 = all cores")
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int = 42


class ChunkingSettings(BaseModel):
    #: Content tokens per chunk (word pieces of the embedding model). Clamped so the
    #: chunk plus its title/section header never exceeds what the embedder reads.
    chunk_tokens: int = Field(200, ge=16)
    overlap_tokens: int = Field(32, ge=0)
    #: Reserve at most this many tokens of the budget for the title/section header.
    max_header_tokens: int = Field(48, ge=0)

    @field_validator("overlap_tokens")
    @classmethod
    def _overlap_lt_chunk(cls, v: int, info: Any) -> int:
        size = info.data.get("chunk_tokens", 200)
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
    fusion: Literal["rrf", "convex"] = "rrf"
    rrf_k: int = Field(60, ge=1)
    #: Weight of the dense retriever in convex fusion (BM25 gets 1 - alpha).
    convex_alpha: float = Field(0.5, ge=0.0, le=1.0)
    #: Candidates each retriever contributes before fusion.
    candidates: int = Field(100, ge=1, le=10000)
    hnsw_ef: int = Field(128, ge=4)
    #: BM25 parameters (the engine's built-in BM25, Snowball English stemmer).
    bm25_k: float = Field(1.2, ge=0.0)
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)
    bm25_avg_len: float = Field(
        120.0, gt=0.0, description="expected tokens per chunk after stop-word removal"
    )


class AnswerSettings(BaseModel):
    mode: Literal["generate", "extractive"] = "generate"
    top_k: int = Field(3, ge=1, le=50)
    context_tokens: int = Field(900, ge=64, description="token budget for the numbered sources")
    #: Cosine similarity (query vs. best chunk) below which nothing is relevant enough.
    min_relevance: float = Field(0.3, ge=-1.0, le=1.0)
    extractive_sentences: int = Field(3, ge=1, le=20)


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    #: The name clients use for the embedded local LLM.
    local_model: str = Field("local", min_length=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)


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
