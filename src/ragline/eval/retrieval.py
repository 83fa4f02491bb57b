"""Retrieval evaluation: index a BEIR corpus once, run every judged query, score the rankings.

The corpus goes into a scratch collection whose name is derived from a hash of the dataset
(resolved path, corpus.jsonl size and mtime) and of every setting that changes what is
indexed (chunking, embedder, BM25 parameters, de-duplication), so a re-run with the same
settings reuses the index and a change of any of them builds a new one. Ingestion is the
product's own (resumable: an interrupted eval picks up where it stopped).

Retrieval returns chunks; the metrics need documents. Each query fetches ``chunk_depth``
chunks through the product's Retriever (the same call ``ragline search`` makes, with
``top_k=chunk_depth``) and keeps each document's best chunk score (max roll-up).
Latency is the wall time of that call (query embedding included), one query at a time.

Ingestion keeps one document of each group with identical content (exact de-duplication is
always on). A BEIR run would index every copy and give them identical scores, so each retrieved
document's score is also given to its identical copies before scoring (``expand_duplicates``);
otherwise a query judged against a dropped copy would score a miss for retrieving its text.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ragline import __version__
from ragline.answer.llm import LLM
from ragline.config import Settings
from ragline.embed.base import Embedder
from ragline.engine import Engine
from ragline.eval.beir import BeirDataset, load_beir
from ragline.eval.metrics import DEFAULT_METRICS, evaluate
from ragline.ingest.chunking import CHUNKER_VERSION, content_hash
from ragline.ingest.pipeline import PAYLOAD_VERSION, ProgressCallback
from ragline.retrieval.retriever import Retriever
from ragline.types import Hit, ParsedDocument, SearchMode

ALL_MODES: tuple[SearchMode, ...] = ("dense", "bm25", "hybrid")
DEFAULT_CHUNK_DEPTH = 200

#: Called after each query: (mode, queries done, queries total).
QueryProgress = Callable[[str, int, int], None]


@dataclass(slots=True)
class ModeResult:
    mode: str
    queries: int
    #: Mean of each metric over the evaluated queries (keys: ndcg@10, recall@10, recall@100, mrr@10).
    metrics: dict[str, float]
    latency_p50_ms: float
    latency_p95_ms: float
    latency_mean_ms: float
    #: Mean number of distinct documents the chunk candidates rolled up to.
    docs_per_query: float
    #: query id -> metric -> value.
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ndcg_10(self) -> float:
        return self.metrics["ndcg@10"]

    @property
    def recall_10(self) -> float:
        return self.metrics["recall@10"]

    @property
    def recall_100(self) -> float:
        return self.metrics["recall@100"]

    @property
    def mrr_10(self) -> float:
        return self.metrics["mrr@10"]

    def to_dict(self, per_query: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "queries": self.queries,
            "metrics": {k: round(v, 5) for k, v in self.metrics.items()},
            "latency_ms": {
                "p50": round(self.latency_p50_ms, 2),
                "p95": round(self.latency_p95_ms, 2),
                "mean": round(self.latency_mean_ms, 2),
            },
            "docs_per_query": round(self.docs_per_query, 1),
        }
        if per_query:
            out["per_query"] = {
                q: {k: round(v, 5) for k, v in vals.items()} for q, vals in self.per_query.items()
            }
        return out


@dataclass(slots=True)
class IndexInfo:
    collection: str
    key: str
    corpus_documents: int
    indexed_documents: int
    chunks: int
    reused: bool
    ingest_seconds: float
    duplicates: int = 0
    failed: int = 0
    #: Corpus documents with no text, which cannot be indexed (they score as misses).
    empty: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "key": self.key,
            "corpus_documents": self.corpus_documents,
            "indexed_documents": self.indexed_documents,
            "chunks": self.chunks,
            "reused": self.reused,
            "ingest_seconds": round(self.ingest_seconds, 2),
            "duplicates": self.duplicates,
            "failed": self.failed,
            "empty": self.empty,
        }


@dataclass(slots=True)
class RetrievalEvalResult:
    dataset: str
    dataset_path: str
    split: str
    queries: int
    chunk_depth: int
    index: IndexInfo
    modes: list[ModeResult]
    settings: dict[str, Any]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def mode(self, name: str) -> ModeResult:
        for m in self.modes:
            if m.mode == name:
                return m
        raise KeyError(name)

    def to_dict(self, per_query: bool = True) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "dataset_path": self.dataset_path,
            "split": self.split,
            "queries": self.queries,
            "chunk_depth": self.chunk_depth,
            "created_at": self.created_at,
            "ragline_version": __version__,
            "index": self.index.to_dict(),
            "settings": self.settings,
            "results": [m.to_dict(per_query) for m in self.modes],
        }


# -- the scratch collection -------------------------------------------------------------


def eval_settings(settings: Settings) -> Settings:
    """The settings an eval indexes with: the given ones, minus near-duplicate dropping.

    A benchmark corpus must be indexed whole: a document dropped as a near-duplicate of
    another can never be retrieved, which would score as a retrieval miss.
    """
    ingest = settings.ingest.model_copy(update={"near_duplicate_detection": False})
    return settings.model_copy(update={"ingest": ingest})


def index_key(dataset: BeirDataset, settings: Settings, embedder_name: str) -> str:
    """Hash of the dataset's identity and of every setting that changes what gets indexed."""
    st = dataset.corpus_path.stat()
    e = settings.embedder
    r = settings.retrieval
    ident = {
        "format": 1,
        "payload_version": PAYLOAD_VERSION,
        "ragline": __version__,
        "dataset": str(dataset.root.resolve()),
        "corpus_bytes": st.st_size,
        "corpus_mtime_ns": st.st_mtime_ns,
        "chunking": settings.chunking.model_dump(),
        "chunker_version": CHUNKER_VERSION,
        "embedder": {
            "name": embedder_name,
            "kind": e.kind,
            "path": str(e.path) if e.path else None,
            "max_tokens": e.max_tokens,
            "normalize": e.normalize,
            "passage_prefix": e.passage_prefix,
        },
        "bm25": {"k": r.bm25_k, "b": r.bm25_b, "avg_len": r.bm25_avg_len},
        "dedup": {
            "near": settings.ingest.near_duplicate_detection,
            "threshold": settings.ingest.near_duplicate_threshold,
        },
    }
    if settings.index.kind != "edge":  # (edge's keys stay what they were before the setting)
        ident["index"] = {
            "kind": settings.index.kind,
            "url": settings.index.url,
            "path": settings.index.path,
            "prefix": settings.index.collection_prefix,
        }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def collection_name(dataset: BeirDataset, key: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.\-]+", "-", dataset.name).strip("-.")[:32] or "dataset"
    return f"eval-{slug}-{key[:12]}"


def roll_up(hits: Sequence[Hit]) -> dict[str, float]:
    """Chunk hits -> document scores: each document keeps its best chunk's score."""
    docs: dict[str, float] = {}
    for h in hits:
        d = h.doc_id
        if d and (d not in docs or h.score > docs[d]):
            docs[d] = h.score
    return docs


def duplicate_groups(docs: Iterable[ParsedDocument]) -> dict[str, list[str]]:
    """doc id -> the other corpus documents with identical content (the hash ingestion de-duplicates on)."""
    by_hash: dict[str, list[str]] = {}
    for d in docs:
        title = "" if d.title == Path(d.source).stem else d.title
        by_hash.setdefault(content_hash(f"{title}\n{d.text}"), []).append(d.doc_id)
    out: dict[str, list[str]] = {}
    for ids in by_hash.values():
        if len(ids) > 1:
            for i in ids:
                out[i] = [j for j in ids if j != i]
    return out


def expand_duplicates(docs: dict[str, float], groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Give each document's score to its identical copies (which ingestion did not index)."""
    if not groups:
        return docs
    out = dict(docs)
    for d, score in docs.items():
        for other in groups.get(d, ()):
            if other not in out or out[other] < score:
                out[other] = score
    return out


# -- the service -------------------------------------------------------------------------


class RetrievalEvaluator:
    """Owns an Engine on the eval settings; ``prepare_index`` then ``evaluate`` (or ``run_mode``)."""

    def __init__(
        self,
        dataset: BeirDataset,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        chunk_depth: int = DEFAULT_CHUNK_DEPTH,
        llm: LLM | None = None,
    ) -> None:
        if chunk_depth < 1:
            raise ValueError("chunk_depth must be at least 1")
        self.dataset = dataset
        self.settings = eval_settings(settings)
        self.chunk_depth = chunk_depth
        self.engine = Engine(self.settings, embedder=embedder, llm=llm)
        self._info: IndexInfo | None = None
        self._duplicates: dict[str, list[str]] = {}

    def __enter__(self) -> RetrievalEvaluator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.engine.close()

    @property
    def collection_name(self) -> str:
        return self.index_info.collection

    @property
    def index_info(self) -> IndexInfo:
        if self._info is None:
            raise RuntimeError("call prepare_index() first")
        return self._info

    def prepare_index(self, progress: ProgressCallback | None = None) -> IndexInfo:
        """Ingest the corpus into the scratch collection; documents already there are skipped."""
        ds = self.dataset
        key = index_key(ds, self.settings, self.engine.embedder.name)
        name = collection_name(ds, key)
        total = ds.corpus_size()
        report = self.engine.ingest_documents(
            ds.iter_corpus(), collection=name, progress=progress, total=total
        )
        col = self.engine.collection(name)
        self._info = IndexInfo(
            collection=name,
            key=key,
            corpus_documents=total,
            indexed_documents=col.registry.count(),
            chunks=col.index.count(),
            reused=report.added == 0 and report.updated == 0,
            ingest_seconds=report.seconds,
            duplicates=report.duplicates + report.near_duplicates,
            failed=len(report.failed),
            empty=ds.empty_documents,
        )
        self._duplicates = duplicate_groups(ds.iter_corpus()) if self._info.duplicates else {}
        return self._info

    def expand(self, docs: dict[str, float]) -> dict[str, float]:
        """Document scores with the identical copies ingestion dropped scored like the copy it kept."""
        return expand_duplicates(docs, self._duplicates)

    def search_documents(self, query: str, mode: SearchMode) -> dict[str, float]:
        """The product's search at ``chunk_depth`` chunks, rolled up to document scores."""
        col = self.engine.collection(self.collection_name)
        retriever = Retriever(self.engine.embedder, self.settings.retrieval)
        return self.expand(roll_up(retriever.search(col.index, query, top_k=self.chunk_depth, mode=mode)))

    def run_mode(self, mode: SearchMode, on_query: QueryProgress | None = None) -> ModeResult:
        ds = self.dataset
        col = self.engine.collection(self.collection_name)
        retriever = Retriever(self.engine.embedder, self.settings.retrieval)
        # one untimed query first: the first ONNX run and the first shard read are slow
        retriever.search(col.index, "warm up", top_k=self.chunk_depth, mode=mode)
        run: dict[str, dict[str, float]] = {}
        latencies: list[float] = []
        total = len(ds.queries)
        for i, (qid, text) in enumerate(ds.queries.items(), start=1):
            t0 = time.perf_counter()
            hits = retriever.search(col.index, text, top_k=self.chunk_depth, mode=mode)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            run[qid] = self.expand(roll_up(hits))
            if on_query:
                on_query(mode, i, total)
        ev = evaluate(run, ds.qrels, DEFAULT_METRICS)
        lat = np.asarray(latencies, dtype=np.float64)
        return ModeResult(
            mode=mode,
            queries=total,
            metrics=ev.means,
            latency_p50_ms=float(np.percentile(lat, 50)) if lat.size else 0.0,
            latency_p95_ms=float(np.percentile(lat, 95)) if lat.size else 0.0,
            latency_mean_ms=float(lat.mean()) if lat.size else 0.0,
            docs_per_query=float(np.mean([len(v) for v in run.values()])) if run else 0.0,
            per_query={q: ev.query_values(q) for q in ev.query_ids},
        )

    def evaluate(
        self, modes: Sequence[SearchMode] = ALL_MODES, on_query: QueryProgress | None = None
    ) -> RetrievalEvalResult:
        results = [self.run_mode(m, on_query) for m in modes]
        s = self.settings
        return RetrievalEvalResult(
            dataset=self.dataset.name,
            dataset_path=str(self.dataset.root),
            split=self.dataset.split,
            queries=len(self.dataset.queries),
            chunk_depth=self.chunk_depth,
            index=self.index_info,
            modes=results,
            settings={
                "embedder": self.engine.embedder.name,
                "chunking": s.chunking.model_dump(),
                "retrieval": s.retrieval.model_dump(),
                "near_duplicate_detection": s.ingest.near_duplicate_detection,
            },
        )


def evaluate_retrieval(
    dataset_dir: str | Path,
    settings: Settings,
    *,
    split: str = "test",
    modes: Sequence[SearchMode] = ALL_MODES,
    embedder: Embedder | None = None,
    chunk_depth: int = DEFAULT_CHUNK_DEPTH,
    on_ingest: ProgressCallback | None = None,
    on_query: QueryProgress | None = None,
) -> RetrievalEvalResult:
    """Load the dataset, build or reuse its index, evaluate each mode."""
    dataset = load_beir(dataset_dir, split)
    with RetrievalEvaluator(dataset, settings, embedder=embedder, chunk_depth=chunk_depth) as ev:
        ev.prepare_index(on_ingest)
        return ev.evaluate(modes, on_query)
