"""The Engine: ragline's Python API. The CLI and the server are thin layers over it.

from ragline import Engine
with Engine() as engine:
    engine.ingest(["docs/"], collection="docs")
    hits = engine.search("how do I configure the embedder?", collection="docs")
    answer = engine.answer("how do I configure the embedder?", collection="docs")
"""

from __future__ import annotations

import logging
import resource
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from ragline.answer import agent as agentic
from ragline.answer import tools
from ragline.answer.answerer import Answerer
from ragline.answer.llm import LLM, TokenCallback, build_llm
from ragline.collection import (
    TENANT_SEP,
    Collection,
    collection_exists,
    collections_root,
    list_collections,
    validate_name,
)
from ragline.config import Settings, load_settings
from ragline.embed.base import Embedder
from ragline.embed.factory import build_embedder
from ragline.errors import (
    CollectionBusy,
    CollectionLimitReached,
    CollectionNotFound,
    CollectionUnavailable,
    RaglineError,
)
from ragline.index.factory import drop_index
from ragline.index.filters import Filter, parse_filters
from ragline.ingest.pipeline import Ingestor, ProgressCallback, StopCheck
from ragline.ingest.registry import DocRecord
from ragline.retrieval.rerank import Reranker, build_reranker
from ragline.retrieval.retriever import Retriever
from ragline.types import Answer, AnswerMode, Hit, IngestReport, ParsedDocument, SearchMode, Usage

log = logging.getLogger("ragline.engine")

#: File descriptors one open collection may hold (5 measured: lock file, SQLite and its WAL
#: files, the shard's WAL), with room for more segments.
_FDS_PER_COLLECTION = 8


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
        # open collections, least recently used first; the number of operations using each
        self._collections: OrderedDict[str, Collection] = OrderedDict()
        self._users: dict[str, int] = {}
        self._lock = threading.RLock()
        self._tool_runner = agentic.ToolRunner()

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

    # -- collections ----------------------------------------------------------------------
    #
    # At most ``max_open_collections()`` collections are held open (each holds file descriptors
    # and engine threads); past that the least recently used one that no operation is using is
    # closed, and reopened on its next use. The Engine's own methods hold a collection for the
    # duration of the call; a Collection returned by ``collection()`` stays valid until it is
    # evicted that way or the engine closes.

    def collection(self, name: str | None = None, *, create: bool = False) -> Collection:
        name = validate_name(name or self.settings.default_collection)
        with self._lock:
            col = self._open(name, create)
            self._evict()
            return col

    def collections(self) -> list[str]:
        return list_collections(self.settings)

    def has_collection(self, name: str) -> bool:
        """Whether a collection exists: no I/O when it is open, else one ``stat`` (not a listing of
        every collection, which grows with their number)."""
        with self._lock:
            if name in self._collections:
                return True
        return collection_exists(self.settings, name)

    def open_collections(self) -> list[str]:
        """The collections open now, least recently used first."""
        with self._lock:
            return list(self._collections)

    def max_open_collections(self) -> int:
        """``collections.max_open``, lowered to what the process's descriptor limit leaves room for."""
        limit = self.settings.collections.max_open
        try:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (OSError, ValueError):
            return limit
        if soft == resource.RLIM_INFINITY:
            return limit
        reserve = max(32, soft // 4)  # sockets, models, temporary files
        return max(1, min(limit, (soft - reserve) // _FDS_PER_COLLECTION))

    def check_can_create(self, name: str) -> None:
        """Raise CollectionLimitReached if ``name`` is new and a collection cap is reached.

        ``collections.max_count`` counts every collection in the data directory;
        ``collections.max_per_tenant`` those of the tenant the stored name belongs to (the part
        before ``TENANT_SEP``; the default tenant's names have none).
        """
        name = validate_name(name)
        if (collections_root(self.settings) / name / "registry.sqlite").exists():
            return
        public = name.rpartition(TENANT_SEP)[2]
        existing = list_collections(self.settings)
        limit = self.settings.collections.max_count
        if len(existing) >= limit:
            raise CollectionLimitReached(
                f"cannot create collection {public!r}: the limit of {limit} collections is reached "
                "(collections.max_count); delete one first"
            )
        tenant = _tenant_of(name)
        per_tenant = self.settings.collections.max_per_tenant
        if sum(1 for c in existing if _tenant_of(c) == tenant) >= per_tenant:
            raise CollectionLimitReached(
                f"cannot create collection {public!r}: the limit of {per_tenant} collections per tenant "
                "is reached (collections.max_per_tenant); delete one first"
            )

    @contextmanager
    def using(self, name: str | None = None, *, create: bool = False) -> Iterator[Collection]:
        """Hold a collection open for the block (it is not closed to make room meanwhile)."""
        name = validate_name(name or self.settings.default_collection)
        with self._lock:
            col = self._open(name, create)
            self._users[name] = self._users.get(name, 0) + 1
            self._evict()
        try:
            yield col
        finally:
            with self._lock:
                left = self._users.get(name, 0) - 1
                if left > 0:
                    self._users[name] = left
                else:
                    self._users.pop(name, None)
                self._evict()

    def _open(self, name: str, create: bool) -> Collection:
        """The open collection ``name``, opened now if need be (caller holds ``self._lock``)."""
        col = self._collections.get(name)
        if col is not None:
            self._collections.move_to_end(name)
            return col
        path = collections_root(self.settings) / name
        existed = path.exists()
        emb = self.embedder
        self._evict(room_for=1)

        def attempt() -> Collection:
            if create:
                self.check_can_create(name)
            return Collection(self.settings, name, emb.dim, emb.name, create=create)

        try:
            try:
                col = attempt()
            except RaglineError:
                raise
            except Exception as first:
                # most likely out of file descriptors: close every idle collection, try once more
                log.warning("opening collection %r failed (%r); closing idle collections", name, first)
                self._evict(keep=0)
                try:
                    col = attempt()
                except RaglineError:
                    raise
                except Exception as e:
                    log.error("opening collection %r failed again: %r", name, e)
                    raise CollectionUnavailable(
                        f"collection {name!r} cannot be opened now (the server is out of resources); "
                        "retry later"
                    ) from e
        except BaseException:
            if not existed:  # created just now and broken: leave nothing behind
                shutil.rmtree(path, ignore_errors=True)
            raise
        self._collections[name] = col
        return col

    def _evict(self, room_for: int = 0, keep: int | None = None) -> None:
        """Close least recently used idle collections until ``room_for`` more fit under the bound
        (or until at most ``keep`` are open: 0 closes every idle one)."""
        bound = self.max_open_collections() - room_for if keep is None else keep
        for name in list(self._collections):
            if len(self._collections) <= bound:
                break
            if self._users.get(name):
                continue
            col = self._collections.pop(name)
            try:
                col.close()
            except Exception as e:  # closing must not fail the request that needed the room
                log.warning("closing collection %r failed: %r", name, e)

    # -- documents -----------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str | Path],
        *,
        collection: str | None = None,
        metadata: dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> IngestReport:
        """Ingest files and folders; ``should_stop`` (polled between documents and embedding
        batches) returning True stops the run with IngestCancelled, keeping the groups written."""
        with self.using(collection, create=True) as col:
            return Ingestor(self.settings, self.embedder, col, should_stop).ingest_paths(
                paths, metadata, progress
            )

    def ingest_documents(
        self,
        documents: Iterable[ParsedDocument],
        *,
        collection: str | None = None,
        progress: ProgressCallback | None = None,
        total: int = 0,
        should_stop: StopCheck | None = None,
    ) -> IngestReport:
        with self.using(collection, create=True) as col:
            return Ingestor(self.settings, self.embedder, col, should_stop).ingest_documents(
                documents, progress, total
            )

    def delete(self, doc_id: str, *, collection: str | None = None) -> DocRecord:
        with self.using(collection) as col:
            return col.delete_document(doc_id)

    def documents(
        self, *, collection: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[DocRecord]:
        with self.using(collection) as col:
            return col.registry.list_documents(limit, offset)

    def document(self, doc_id: str, *, collection: str | None = None) -> DocRecord | None:
        """The registry record of ``doc_id``, or None (also when the collection does not exist)."""
        name = validate_name(collection or self.settings.default_collection)
        if name not in self.collections():
            return None
        with self.using(name) as col:
            return col.registry.get(doc_id)

    def versions(self, collection: str, doc_ids: Sequence[str]) -> dict[str, str]:
        """doc_id -> current version of those of ``doc_ids`` the collection holds (none when the
        collection does not exist). Blocking: one registry read."""
        if not self.has_collection(collection):
            return {}
        with self.using(collection) as col:
            return {d: r.version for d, r in col.registry.get_many(doc_ids).items()}

    def drop_collection(self, name: str) -> None:
        name = validate_name(name)
        with self._lock:
            users = self._users.get(name, 0)
            if users:
                raise CollectionBusy(
                    f"collection {name!r} is in use by {users} running operation(s) (an ingestion, a "
                    "search); retry when they finish"
                )
            col = self._collections.pop(name, None)
            if col is not None:
                col.close()
            path = collections_root(self.settings) / name
            if not path.exists():
                raise CollectionNotFound(f"collection {name!r} does not exist")
            drop_index(self.settings, name)
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
        flt = parse_filters(filters) if isinstance(filters, list) else filters
        with self.using(collection) as col:
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
        query_vector: npt.NDArray[np.float32] | None = None,
        calling: tools.ToolCalling | None = None,
        history: Sequence[dict[str, str]] = (),
    ) -> Answer:
        """Retrieve, then answer with citations. ``max_tokens`` caps generation (default:
        ``answer.max_tokens``); ``query_vector``: the question's embedding when the caller has it;
        ``calling``: the caller's tools, offered beside the sources (generate mode), ``history``
        the turns after the question. ``agentic``: a run of several steps (``agent_run``; one
        that pauses for a tool call returns it as the answer's ``tool_calls``)."""
        a = self.settings.answer
        mode = mode or a.mode
        if mode not in ("generate", "extractive", "agentic"):
            raise ValueError(f"unknown answer mode {mode!r}; choose generate, extractive or agentic")
        if mode == "agentic":
            if isinstance(filters, Filter):
                raise ValueError("agentic answers take filters as field=value strings")
            state = agentic.RunState.new(question, collection or self.settings.default_collection, filters)
            return self.agent_run(state, on_token=on_token, max_tokens=max_tokens, query_vector=query_vector)
        flt = parse_filters(filters) if isinstance(filters, list) else filters
        with self.using(collection) as col:
            return self._answer(
                col, question, mode, top_k, flt, on_token, max_tokens, query_vector, calling, history
            )

    def _answer(
        self,
        col: Collection,
        question: str,
        mode: AnswerMode,
        top_k: int | None,
        flt: Filter | None,
        on_token: TokenCallback | None,
        max_tokens: int | None,
        query_vector: npt.NDArray[np.float32] | None = None,
        calling: tools.ToolCalling | None = None,
        history: Sequence[dict[str, str]] = (),
    ) -> Answer:
        a = self.settings.answer
        retriever = Retriever(self.embedder, self.settings.retrieval)
        t0 = time.perf_counter()
        qvec = query_vector if query_vector is not None else retriever.embed_query(question)
        hits = self._retrieve(col, question, top_k or a.top_k, flt=flt, query_vector=qvec)
        _fill_dense_scores(col, hits, qvec)
        usage = Usage(retrieval_ms=(time.perf_counter() - t0) * 1000)
        answerer = Answerer(self.embedder, a, self.settings.llm)
        best = max((h.dense_score for h in hits if h.dense_score is not None), default=-1.0)
        if calling is None and (not hits or best < a.min_relevance):
            return answerer.not_found(hits, usage, mode)
        if mode == "extractive":
            return answerer.extractive(question, qvec, hits, usage)
        relevant = hits if best >= a.min_relevance else []  # with tools, the model may still call one
        return answerer.generate(
            question,
            self.llm,
            relevant,
            usage,
            on_token=on_token,
            query_vector=qvec,
            max_tokens=max_tokens,
            calling=calling,
            history=history,
        )

    def agent_run(
        self,
        state: agentic.RunState,
        *,
        decision: agentic.Decision | None = None,
        on_token: TokenCallback | None = None,
        max_tokens: int | None = None,
        query_vector: npt.NDArray[np.float32] | None = None,
    ) -> Answer:
        """Take an agentic run forward (``answer/agent.py``): apply the caller's ``decision`` on
        its pending call, then search and decide until it answers (the answer, its citations from
        every step's sources) or pauses (the answer's ``tool_calls``: the pending call, ``run``:
        the state to keep). ``state`` is updated in place. Raises ``agent.DecisionError``."""
        a = self.settings.answer
        retriever = Retriever(self.embedder, self.settings.retrieval)
        searched = [0.0]
        t_start = time.perf_counter()
        with self.using(state.collection) as col:

            def search(query: str, filters: list[str]) -> list[Hit]:
                t0 = time.perf_counter()
                qvec = query_vector if query_vector is not None and query == state.question else None
                qvec = qvec if qvec is not None else retriever.embed_query(query)
                hits = self._retrieve(
                    col, query, a.agent.top_k, flt=parse_filters(filters), query_vector=qvec
                )
                _fill_dense_scores(col, hits, qvec)
                searched[0] += (time.perf_counter() - t0) * 1000
                return hits

            agent = agentic.Agent(a.agent, self.llm, search, self._tool_runner)
            if decision is not None:
                agent.decide(state, decision)
            agent.advance(state)
        usage = agentic.usage_of(state)
        usage.retrieval_ms = searched[0]
        usage.generation_ms = (time.perf_counter() - t_start) * 1000 - searched[0]
        hits = agentic.sources(state)
        steps = [s.public() for s in state.steps]
        answerer = Answerer(self.embedder, a, self.settings.llm)
        if state.pending is not None:
            return Answer(
                "",
                [],
                hits,
                usage,
                "agentic",
                found=False,
                tool_calls=[state.pending.tool_call()],
                steps=steps,
                run=state.public(),
            )
        notes = agentic.notes(state)
        relevant = [h for h in hits if h.dense_score is not None and h.dense_score >= a.min_relevance]
        if not relevant and not notes:
            answer = answerer.not_found(hits, usage, "agentic")
        else:
            answer = answerer.generate(
                state.question,
                self.llm,
                relevant,
                usage,
                on_token=on_token,
                query_vector=query_vector,
                max_tokens=max_tokens,
                notes=notes,
                mode="agentic",
            )
        answer.steps = steps
        answer.run = state.public()
        return answer


def _tenant_of(stored: str) -> str:
    """The tenant part of a stored collection name ("" for the default tenant's)."""
    tenant, sep, _ = stored.partition(TENANT_SEP)
    return tenant if sep else ""


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
