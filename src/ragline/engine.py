"""The Engine: ragline's Python API. The CLI and the server are thin layers over it.

from ragline import Engine
with Engine() as engine:
    engine.ingest(["docs/"], collection="docs")
    hits = engine.search("how do I configure the embedder?", collection="docs")
    answer = engine.answer("how do I configure the embedder?", collection="docs")
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ragline.answer.answerer import Answerer
from ragline.answer.llm import LLM, TokenCallback, build_llm
from ragline.collection import Collection, list_collections, validate_name
from ragline.config import Settings, load_settings
from ragline.embed.base import Embedder
from ragline.embed.factory import build_embedder
from ragline.errors import CollectionNotFound
from ragline.index.filters import Filter, parse_filters
from ragline.ingest.pipeline import Ingestor, ProgressCallback
from ragline.ingest.registry import DocRecord
from ragline.retrieval.rerank import Reranker, build_reranker
from ragline.retrieval.retriever import Retriever
from ragline.types import Answer, AnswerMode, Hit, IngestReport, ParsedDocument, SearchMode, Usage


class Engine:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        embedder: Embedder | None = None,
        llm: LLM | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = settings or load_settings(**overrides)
        self._embedder = embedder
        self._llm = llm
        self._reranker: Reranker | None = None
        self._collections: dict[str, Collection] = {}
        self._lock = threading.RLock()

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for col in self._collections.values():
                col.close()
            self._collections.clear()

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = build_embedder(self.settings.embedder)
            return self._embedder

    @property
    def reranker(self) -> Reranker:
        with self._lock:
            if self._reranker is None:
                self._reranker = build_reranker(self.settings.rerank)
            return self._reranker

    def _retrieve(self, col: Collection, query: str, top_k: int, **kwargs: Any) -> list[Hit]:
        """First stage (retriever), then the optional second stage (reranker) down to top_k."""
        retriever = Retriever(self.embedder, self.settings.retrieval)
        if self.settings.rerank.kind == "none":
            return retriever.search(col.index, query, top_k=top_k, **kwargs)
        first = retriever.search(
            col.index, query, top_k=max(top_k, self.settings.rerank.candidates), **kwargs
        )
        return self.reranker.rerank(query, first, top_k)

    @property
    def llm(self) -> LLM:
        with self._lock:
            if self._llm is None:
                self._llm = build_llm(self.settings.llm)
            return self._llm

    def collection(self, name: str | None = None, *, create: bool = False) -> Collection:
        name = validate_name(name or self.settings.default_collection)
        with self._lock:
            col = self._collections.get(name)
            if col is None:
                emb = self.embedder
                col = Collection(self.settings, name, emb.dim, emb.name, create=create)
                self._collections[name] = col
            return col

    def collections(self) -> list[str]:
        return list_collections(self.settings)

    # -- documents -----------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str | Path],
        *,
        collection: str | None = None,
        metadata: dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> IngestReport:
        col = self.collection(collection, create=True)
        return Ingestor(self.settings, self.embedder, col).ingest_paths(paths, metadata, progress)

    def ingest_documents(
        self,
        documents: Iterable[ParsedDocument],
        *,
        collection: str | None = None,
        progress: ProgressCallback | None = None,
        total: int = 0,
    ) -> IngestReport:
        col = self.collection(collection, create=True)
        return Ingestor(self.settings, self.embedder, col).ingest_documents(documents, progress, total)

    def delete(self, doc_id: str, *, collection: str | None = None) -> DocRecord:
        return self.collection(collection).delete_document(doc_id)

    def documents(
        self, *, collection: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[DocRecord]:
        return self.collection(collection).registry.list_documents(limit, offset)

    def drop_collection(self, name: str) -> None:
        import shutil

        name = validate_name(name)
        with self._lock:
            col = self._collections.pop(name, None)
            if col is not None:
                col.close()
            path = self.settings.data_dir / "collections" / name
            if not path.exists():
                raise CollectionNotFound(f"collection {name!r} does not exist")
            shutil.rmtree(path)

    # -- retrieval -----------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        collection: str | None = None,
        top_k: int | None = None,
        mode: SearchMode | None = None,
        filters: Filter | list[str] | None = None,
        **kwargs: Any,
    ) -> list[Hit]:
        col = self.collection(collection)
        flt = parse_filters(filters) if isinstance(filters, list) else filters
        return self._retrieve(
            col, query, top_k or self.settings.retrieval.top_k, mode=mode, flt=flt, **kwargs
        )

    # -- answers ------------------------------------------------------------------------

    def answer(
        self,
        question: str,
        *,
        collection: str | None = None,
        mode: AnswerMode | None = None,
        top_k: int | None = None,
        filters: Filter | list[str] | None = None,
        on_token: TokenCallback | None = None,
        max_tokens: int | None = None,
    ) -> Answer:
        """Retrieve, then answer with citations. ``max_tokens`` caps generation (default:
        ``answer.max_tokens``)."""
        a = self.settings.answer
        mode = mode or a.mode
        if mode not in ("generate", "extractive"):
            raise ValueError(f"unknown answer mode {mode!r}; choose generate or extractive")
        col = self.collection(collection)
        flt = parse_filters(filters) if isinstance(filters, list) else filters
        retriever = Retriever(self.embedder, self.settings.retrieval)
        t0 = time.perf_counter()
        qvec = retriever.embed_query(question)
        hits = self._retrieve(col, question, top_k or a.top_k, flt=flt, query_vector=qvec)
        _fill_dense_scores(col, hits, qvec)
        usage = Usage(retrieval_ms=(time.perf_counter() - t0) * 1000)
        answerer = Answerer(self.embedder, a, self.settings.llm)
        best = max((h.dense_score for h in hits if h.dense_score is not None), default=-1.0)
        if not hits or best < a.min_relevance:
            return answerer.not_found(hits, usage, mode)
        if mode == "extractive":
            return answerer.extractive(question, qvec, hits, usage)
        return answerer.generate(
            question, self.llm, hits, usage, on_token=on_token, query_vector=qvec, max_tokens=max_tokens
        )


def _fill_dense_scores(col: Collection, hits: list[Hit], qvec: Any) -> None:
    """BM25-only candidates have no dense score; compute it so relevance can be judged."""
    missing = [h.chunk_id for h in hits if h.dense_score is None]
    if not missing:
        return
    stored = col.index.points(missing, fields=(), dense=True)
    for h in hits:
        vec = stored[h.chunk_id].dense if h.chunk_id in stored else None
        if h.dense_score is None and vec is not None:
            h.dense_score = float(vec @ qvec)
