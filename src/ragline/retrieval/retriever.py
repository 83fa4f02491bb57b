"""The retriever: embeds the query, asks the index for dense and BM25 candidates, fuses them."""

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
        dense_hits, bm25_hits = index.search(
            dense=query_vector if want_dense else None,
            text=query if want_bm25 else None,
            limit=limit,
            flt=flt,
            exact=exact,
        )
        if mode == "dense":
            fused = {h.id: h.score for h in dense_hits}
        elif mode == "bm25":
            fused = {h.id: h.score for h in bm25_hits}
        elif method is fusion.FusionMethod.RRF:
            fused = fusion.rrf([dense_hits, bm25_hits], k=s.rrf_k)
        else:
            fused = fusion.convex(dense_hits, bm25_hits, alpha=s.convex_alpha)
        return _to_hits(fused, dense_hits, bm25_hits, top_k)


def _to_hits(
    fused: dict[str, float], dense: Sequence[IndexHit], sparse: Sequence[IndexHit], top_k: int
) -> list[Hit]:
    by_id: dict[str, IndexHit] = {h.id: h for h in sparse}
    by_id.update({h.id: h for h in dense})
    dscore = {h.id: h.score for h in dense}
    sscore = {h.id: h.score for h in sparse}
    ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    out = []
    for cid, score in ranked:
        ih = by_id[cid]
        payload = dict(ih.payload)
        text = str(payload.pop("text", ""))
        out.append(Hit(cid, score, text, payload, dscore.get(cid), sscore.get(cid)))
    return out
