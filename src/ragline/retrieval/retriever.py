"""The retriever: embeds the query, asks the index for dense and BM25 candidates, fuses them.

Optional dense pseudo-relevance feedback (hybrid mode, ``retrieval.prf_docs`` > 0): the first
fused ranking's top ``prf_docs`` documents give their best chunk each; the query vector moves
towards the mean of those chunks' stored vectors (Rocchio, q' = normalize(q + prf_beta * mean)),
and a new dense list for q' is fused with the same BM25 list. ``retrieval.prf_mode`` says where
that list comes from: ``rescore`` (default) scores the first-stage candidates of both lists
against q' (an exact scoring of those ids only, no second index search); ``search`` searches
the dense index again with q' (it can reach chunks neither first list held, for the price of a
second HNSW search). The two measured the same nDCG@10 within noise on five sets
(bench/eval_levers.py). Hits keep their cosine similarity to the original query as
``dense_score`` (None for a chunk the first dense list did not hold).

Candidate lists carry no payloads: the feedback step reads only ``doc_id`` for the top of the
fused ranking, and the final top_k read theirs in one lookup (at 100k chunks this is the
difference between ~8 ms and ~2 ms per search).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ragline.config import RetrievalSettings
from ragline.embed.base import Embedder
from ragline.index.base import IndexHit, VectorIndex
from ragline.index.filters import Filter
from ragline.retrieval import fusion
from ragline.types import Hit, SearchMode

_MODES = ("hybrid", "dense", "bm25")


class Retriever:
    def __init__(self, embedder: Embedder, settings: RetrievalSettings) -> None:
        self._embedder = embedder
        self._settings = settings

    def embed_query(self, query: str) -> npt.NDArray[np.float32]:
        vec: npt.NDArray[np.float32] = self._embedder.embed_queries([query])[0]
        return vec

    def search(
        self,
        index: VectorIndex,
        query: str,
        *,
        top_k: int | None = None,
        mode: SearchMode | None = None,
        flt: Filter | None = None,
        query_vector: npt.NDArray[np.float32] | None = None,
        candidates: int | None = None,
        fusion_method: str | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        s = self._settings
        mode = mode or s.mode
        if mode not in _MODES:
            raise ValueError(f"unknown search mode {mode!r}; choose one of {list(_MODES)}")
        top_k = top_k or s.top_k
        method = fusion.FusionMethod.parse(fusion_method or s.fusion)
        want_dense = mode in ("hybrid", "dense")
        want_bm25 = mode in ("hybrid", "bm25")
        if want_dense and query_vector is None:
            query_vector = self.embed_query(query)
        limit = max(top_k, candidates or s.candidates) if mode == "hybrid" else top_k
        # candidates come without payloads (reading them is most of a search's cost); the
        # kept top_k get theirs in one lookup at the end
        dense_hits, bm25_hits = index.search(
            dense=query_vector if want_dense else None,
            text=query if want_bm25 else None,
            limit=limit,
            flt=flt,
            exact=exact,
            fields=(),
        )
        if mode == "dense":
            fused = {h.id: h.score for h in dense_hits}
        elif mode == "bm25":
            fused = {h.id: h.score for h in bm25_hits}
        else:
            fused = self._fuse(method, dense_hits, bm25_hits)
            if s.prf_docs > 0 and query_vector is not None:
                fb_hits = self._feedback_dense(
                    index, query_vector, fused, dense_hits, bm25_hits, limit=limit, flt=flt, exact=exact
                )
                if fb_hits is not None:
                    fused = self._fuse(method, fb_hits, bm25_hits)
        return _to_hits(index, fused, dense_hits, bm25_hits, top_k)

    def _fuse(
        self, method: fusion.FusionMethod, dense: Sequence[IndexHit], sparse: Sequence[IndexHit]
    ) -> dict[str, float]:
        s = self._settings
        if method is fusion.FusionMethod.RRF:
            return fusion.rrf([dense, sparse], k=s.rrf_k)
        return fusion.convex(dense, sparse, alpha=s.convex_alpha, normalization=s.normalization)

    def _feedback_vectors(self, index: VectorIndex, fused: dict[str, float]) -> list[npt.NDArray[np.float32]]:
        """The stored vectors of the best chunk of each of the top ``prf_docs`` documents of the
        fused ranking (``doc_id`` and vector read together, for a few more chunks than needed)."""
        want = self._settings.prf_docs
        ranked = [cid for cid, _ in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))]
        vectors: list[npt.NDArray[np.float32]] = []
        seen: set[str] = set()
        start, step = 0, 4 * want
        while start < len(ranked) and len(vectors) < want:
            batch = ranked[start : start + step]
            stored = index.points(batch, fields=("doc_id",), dense=True)
            for cid in batch:
                point = stored.get(cid)
                if point is None or point.dense is None:  # deleted since the search
                    continue
                doc = str(point.payload.get("doc_id", "")) or cid
                if doc not in seen:
                    seen.add(doc)
                    vectors.append(point.dense)
                    if len(vectors) == want:
                        break
            start, step = start + step, step * 2
        return vectors

    def _feedback_dense(
        self,
        index: VectorIndex,
        query_vector: npt.NDArray[np.float32],
        fused: dict[str, float],
        dense: Sequence[IndexHit],
        sparse: Sequence[IndexHit],
        *,
        limit: int,
        flt: Filter | None,
        exact: bool,
    ) -> list[IndexHit] | None:
        """The dense list for the Rocchio-expanded query, or None when there is no feedback."""
        vectors = self._feedback_vectors(index, fused)
        if not vectors:
            return None
        centroid = np.mean(np.stack(vectors), axis=0)
        beta = np.float32(self._settings.prf_beta)
        q = query_vector.astype(np.float32) + beta * centroid.astype(np.float32)
        norm = float(np.linalg.norm(q))
        if norm > 0:
            q = q / np.float32(norm)
        if self._settings.prf_mode == "search":
            second, _ = index.search(dense=q, text=None, limit=limit, flt=flt, exact=exact, fields=())
            return second
        # rescore: the first-stage candidates, both lists, by similarity to q' (the filter and
        # the deletions were already applied by the first searches)
        ids = list(dict.fromkeys([h.id for h in dense] + [h.id for h in sparse]))
        return index.rescore(q, ids, limit) or None


def _to_hits(
    index: VectorIndex,
    fused: dict[str, float],
    dense: Sequence[IndexHit],
    sparse: Sequence[IndexHit],
    top_k: int,
) -> list[Hit]:
    """The top_k of the fused ranking with their payloads (a chunk deleted meanwhile is skipped)."""
    dscore = {h.id: h.score for h in dense}
    sscore = {h.id: h.score for h in sparse}
    ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    stored = index.points([cid for cid, _ in ranked])
    out = []
    for cid, score in ranked:
        if cid not in stored:
            continue
        payload = dict(stored[cid].payload)
        text = str(payload.pop("text", ""))
        out.append(Hit(cid, score, text, payload, dscore.get(cid), sscore.get(cid)))
    return out
