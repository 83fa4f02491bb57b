"""Plain data types that flow between ragline's modules.

They carry no behaviour and no backend types: the index, the embedder and the
LLM translate to and from these at their edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SearchMode = Literal["hybrid", "dense", "bm25"]
AnswerMode = Literal["generate", "extractive", "agentic"]
FusionMethod = Literal["rrf", "convex"]

# Payload fields every chunk carries (and that can be filtered on).
CORE_FIELDS = (
    "doc_id",
    "source",
    "title",
    "section",
    "page",
    "chunk_index",
    "content_hash",
    "ingested_at",
)


@dataclass(slots=True)
class Section:
    """A run of text under one heading path (and, for PDFs, one page)."""

    text: str
    heading_path: list[str] = field(default_factory=list)
    page: int | None = None


@dataclass(slots=True)
class ParsedDocument:
    """One document as a parser returns it, before cleaning and chunking."""

    doc_id: str
    source: str
    title: str
    sections: list[Section]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: What the parser left out (a document cut at a configured limit), shown in the report.
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


@dataclass(slots=True)
class Chunk:
    """A piece of a document that is embedded and indexed."""

    chunk_id: str
    doc_id: str
    index: int
    text: str
    title: str
    section: str
    page: int | None
    n_tokens: int
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The chunk with some of its section's text on either side (chunking.lexical_context_tokens),
    #: which BM25 indexes in place of the chunk alone; "" = the chunk's own text.
    context: str = ""

    def _header(self) -> str:
        return " — ".join(p for p in (self.title, self.section) if p)

    def embedding_text(self) -> str:
        """What the embedder sees: title and section give the chunk its context."""
        head = self._header()
        return f"{head}\n{self.text}" if head else self.text

    def lexical_text(self, title_weight: int = 1) -> str:
        """What BM25 indexes: the header and the chunk, widened by its context when there is one;
        the title counted ``title_weight`` times (field weighting by repetition)."""
        body = self.context or self.text
        head = self._header()
        if self.title and title_weight > 1:
            head = "\n".join([self.title] * (title_weight - 1) + [head])
        return f"{head}\n{body}" if head else body


@dataclass(slots=True)
class Hit:
    """One search result: a chunk, its fused score and the per-retriever scores."""

    chunk_id: str
    score: float
    text: str
    payload: dict[str, Any]
    dense_score: float | None = None
    bm25_score: float | None = None

    @property
    def doc_id(self) -> str:
        return str(self.payload.get("doc_id", ""))

    @property
    def title(self) -> str:
        return str(self.payload.get("title", ""))

    @property
    def section(self) -> str:
        return str(self.payload.get("section", ""))

    @property
    def page(self) -> int | None:
        p = self.payload.get("page")
        return int(p) if isinstance(p, int | float) else None

    @property
    def window(self) -> str:
        """The chunk with its section's text on either side (stored at ingestion when
        ``chunking.lexical_context_tokens`` > 0), else the chunk's own text."""
        w = self.payload.get("window")
        return w if isinstance(w, str) and w else self.text


@dataclass(slots=True)
class Citation:
    """A numbered source that an answer cites."""

    number: int
    chunk_id: str
    doc_id: str
    title: str
    section: str
    page: int | None
    source: str
    snippet: str
    inferred: bool = False  # attached by matching the sentence to the source, not cited by the model


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retrieval_ms: float = 0.0
    generation_ms: float = 0.0


@dataclass(slots=True)
class Answer:
    text: str
    citations: list[Citation]
    sources: list[Hit]
    usage: Usage
    mode: AnswerMode
    found: bool
    #: The model's tool calls instead of an answer (OpenAI's ``tool_calls``): a caller's tool, or a
    #: paused agentic run's pending call.
    tool_calls: list[dict[str, Any]] | None = None
    #: An agentic answer's steps: each search or tool call, in order (``answer/agent.py``).
    steps: list[dict[str, Any]] = field(default_factory=list)
    #: A paused agentic run: its id, status and the action it waits for.
    run: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self._to_dict()
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        if self.steps:
            out["steps"] = self.steps
        if self.run is not None:
            out["run"] = self.run
        return out

    def _to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "found": self.found,
            "mode": self.mode,
            "citations": [
                {
                    "number": c.number,
                    "chunk_id": c.chunk_id,
                    "doc_id": c.doc_id,
                    "title": c.title,
                    "section": c.section,
                    "page": c.page,
                    "source": c.source,
                    "snippet": c.snippet,
                    "inferred": c.inferred,
                }
                for c in self.citations
            ],
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "retrieval_ms": round(self.usage.retrieval_ms, 2),
                "generation_ms": round(self.usage.generation_ms, 2),
            },
        }


@dataclass(slots=True)
class FileFailure:
    path: str
    reason: str


@dataclass(slots=True)
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    failed: list[FileFailure] = field(default_factory=list)
    #: Documents ingested only in part (cut at a configured limit), with what was left out.
    warnings: list[FileFailure] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0
    doc_ids: list[str] = field(default_factory=list)

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "near_duplicates": self.near_duplicates,
            "failed": [{"path": f.path, "reason": f.reason} for f in self.failed],
            "warnings": [{"path": f.path, "reason": f.reason} for f in self.warnings],
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
            "chunks_per_second": round(self.chunks_per_second, 1),
        }
