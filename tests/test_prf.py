"""Dense pseudo-relevance feedback (retrieval.prf_docs / prf_beta) in hybrid search.

A scripted in-memory index checks the mechanics exactly (which chunks give feedback, the
expanded query vector, what the hits carry); a real engine checks the option end to end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fixtures import write_jsonl
from ragline import Engine
from ragline.config import RetrievalSettings
from ragline.index.base import IndexHit, StoredPoint
from ragline.index.filters import Filter
from ragline.retrieval import fusion
from ragline.retrieval.retriever import Retriever

Vec = npt.NDArray[np.float32]
DIM = 4


def _unit(*xs: float) -> Vec:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.float32(np.linalg.norm(v))


class FakeEmbedder:
    name = "fake"
    dim = DIM
    max_tokens = 64

    def __init__(self, qvec: Vec) -> None:
        self.qvec = qvec

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return []

    def embed_documents(self, texts: Sequence[str]) -> Vec:
        return np.zeros((len(texts), DIM), dtype=np.float32)

    def embed_queries(self, texts: Sequence[str]) -> Vec:
        return np.stack([self.qvec for _ in texts])


class FakeIndex:
    """Chunks c<doc><n> with fixed vectors; dense search is exact cosine, BM25 a fixed list."""

    def __init__(self) -> None:
        self.vectors: dict[str, Vec] = {
            "a1": _unit(1, 0, 0, 0),
            "a2": _unit(1, 1, 0, 0),
            "b1": _unit(0.8, 0, 0.6, 0),
            "c1": _unit(0, 0, 1, 0),
            "d1": _unit(0, 0, 0.6, 0.8),
            "e1": _unit(0, 0, 0, 1),
        }
        self.doc = {cid: cid[0] for cid in self.vectors}
        self.bm25 = [("c1", 5.0), ("a2", 4.0), ("e1", 1.0)]
        self.dense_queries: list[Vec] = []
        self.vector_requests: list[list[str]] = []
        self.rescored: list[list[str]] = []

    def _payload(self, cid: str, fields: Sequence[str] | None) -> dict[str, Any]:
        full = {"doc_id": self.doc[cid], "text": f"text of {cid}"}
        return full if fields is None else {k: v for k, v in full.items() if k in fields}

    def _hit(self, cid: str, score: float, fields: Sequence[str] | None) -> IndexHit:
        return IndexHit(cid, score, self._payload(cid, fields))

    def search(
        self,
        *,
        dense: Vec | None,
        text: str | None,
        limit: int,
        flt: Filter | None = None,
        exact: bool = False,
        fields: Sequence[str] | None = None,
    ) -> tuple[list[IndexHit], list[IndexHit]]:
        dense_hits: list[IndexHit] = []
        if dense is not None:
            self.dense_queries.append(np.array(dense, copy=True))
            scored = sorted(((float(v @ dense), cid) for cid, v in self.vectors.items()), reverse=True)
            dense_hits = [self._hit(cid, s, fields) for s, cid in scored[:limit]]
        sparse = [self._hit(cid, s, fields) for cid, s in self.bm25[:limit]] if text is not None else []
        return dense_hits, sparse

    def rescore(self, dense: Vec, ids: Sequence[str], limit: int) -> list[IndexHit]:
        self.rescored.append(list(ids))
        scored = sorted(((float(self.vectors[i] @ dense), i) for i in ids if i in self.vectors), reverse=True)
        return [IndexHit(i, s, {}) for s, i in scored[:limit]]

    def points(
        self, ids: Sequence[str], *, fields: Sequence[str] | None = None, dense: bool = False
    ) -> dict[str, StoredPoint]:
        if dense:
            self.vector_requests.append(list(ids))
        return {
            i: StoredPoint(self._payload(i, fields), self.vectors[i] if dense else None)
            for i in ids
            if i in self.vectors
        }


QVEC = _unit(1, 0, 0.2, 0)


def _search(index: FakeIndex, **settings: Any) -> list[Any]:
    retriever = Retriever(FakeEmbedder(QVEC), RetrievalSettings(**settings))
    return retriever.search(index, "query", top_k=6, mode="hybrid")  # type: ignore[arg-type]


def test_prf_off_when_prf_docs_is_zero() -> None:
    index = FakeIndex()
    _search(index, prf_docs=0)
    assert len(index.dense_queries) == 1 and index.vector_requests == []


def test_prf_moves_the_dense_query_towards_the_top_documents() -> None:
    index = FakeIndex()
    baseline = _search(FakeIndex(), prf_docs=0, fusion="rrf", rrf_k=60)
    top_docs: list[str] = []
    for h in baseline:
        if h.doc_id not in top_docs:
            top_docs.append(h.doc_id)
    # the best chunk of each of the first two documents of the first fused ranking
    best = {}
    for h in baseline:
        best.setdefault(h.doc_id, h.chunk_id)
    expected_feedback = [best[d] for d in top_docs[:2]]

    hits = _search(index, prf_docs=2, prf_beta=0.7, fusion="rrf", rrf_k=60, prf_mode="search")

    # one read of doc ids and vectors for the head of the ranking; the centroid below shows
    # exactly which chunks were used
    assert len(index.vector_requests) == 1 and set(expected_feedback) <= set(index.vector_requests[0])
    assert len(index.dense_queries) == 2
    first, second = index.dense_queries
    np.testing.assert_allclose(first, QVEC, rtol=1e-6)
    centroid = np.mean([index.vectors[c] for c in expected_feedback], axis=0)
    want = QVEC + 0.7 * centroid
    np.testing.assert_allclose(second, want / np.linalg.norm(want), rtol=1e-5)
    assert not np.allclose(first, second)

    # valid hits: known chunks, one each, best first, with their text and payload
    assert hits and len(hits) <= 6
    ids = [h.chunk_id for h in hits]
    assert len(set(ids)) == len(ids) and set(ids) <= set(index.vectors)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        assert h.text == f"text of {h.chunk_id}" and h.doc_id == index.doc[h.chunk_id]
        assert "text" not in h.payload
        # dense_score stays the similarity to the original query (None if only q' found it)
        if h.dense_score is not None:
            assert h.dense_score == pytest.approx(float(index.vectors[h.chunk_id] @ QVEC), abs=1e-6)


def test_prf_rescore_ranks_the_first_stage_candidates_by_the_expanded_query() -> None:
    index = FakeIndex()
    base = _search(FakeIndex(), prf_docs=0, fusion="rrf", rrf_k=60)
    best: dict[str, str] = {}
    for h in base:
        best.setdefault(h.doc_id, h.chunk_id)
    feedback = list(best.values())[:2]

    hits = _search(index, prf_docs=2, prf_beta=0.7, fusion="rrf", rrf_k=60, prf_mode="rescore")

    assert len(index.dense_queries) == 1  # no second index search
    first_stage = set(index.vectors)  # the fake's dense list holds every chunk at this limit
    assert len(index.vector_requests) == 1 and len(index.rescored) == 1
    assert set(index.rescored[0]) == first_stage
    want = QVEC + 0.7 * np.mean([index.vectors[c] for c in feedback], axis=0)
    want = want / np.linalg.norm(want)
    rescored = sorted(first_stage, key=lambda c: -float(index.vectors[c] @ want))
    expected = fusion.rrf(
        [[IndexHit(c, 0.0, {}) for c in rescored], [IndexHit(c, 0.0, {}) for c, _ in index.bm25]], k=60
    )
    ranked = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(h.chunk_id, round(h.score, 9)) for h in hits] == [(c, round(s, 9)) for c, s in ranked[:6]]
    for h in hits:  # still the similarity to the original query
        assert h.dense_score == pytest.approx(float(index.vectors[h.chunk_id] @ QVEC), abs=1e-6)


@pytest.mark.parametrize("mode", ["rescore", "search"])
def test_prf_changes_the_ranking_only_through_the_dense_side(mode: str) -> None:
    # beta = 0: q' = q, so the fused ranking is the same as without feedback
    same = _search(FakeIndex(), prf_docs=3, prf_beta=0.0, prf_mode=mode)
    base = _search(FakeIndex(), prf_docs=0)
    assert [(h.chunk_id, round(h.score, 9)) for h in same] == [(h.chunk_id, round(h.score, 9)) for h in base]
    # a strong pull towards the feedback reorders the dense list, hence the fusion
    base = _search(FakeIndex(), prf_docs=0, fusion="convex", convex_alpha=0.5)
    pulled = _search(FakeIndex(), prf_docs=1, prf_beta=5.0, fusion="convex", convex_alpha=0.5, prf_mode=mode)
    # (the top chunk a2 gets closer to q', so its fused score rises)
    assert pulled[0].chunk_id == base[0].chunk_id == "a2" and pulled[0].score > base[0].score + 0.1


def test_prf_not_used_by_single_retriever_modes() -> None:
    index = FakeIndex()
    retriever = Retriever(FakeEmbedder(QVEC), RetrievalSettings(prf_docs=3))
    retriever.search(index, "query", top_k=3, mode="dense")  # type: ignore[arg-type]
    retriever.search(index, "query", top_k=3, mode="bm25")  # type: ignore[arg-type]
    assert len(index.dense_queries) == 1 and index.vector_requests == []


def test_prf_on_a_real_engine(tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    texts = {
        "bread": "Sourdough bread needs a long cold proof in the fridge.",
        "yeast": "Wild yeast and lactobacilli leaven sourdough starters.",
        "stars": "Telescopes measure the redshift of distant galaxies.",
        "bonds": "Bond prices fall when interest rates rise.",
        "cats": "The cat dozes on the sunny windowsill all afternoon.",
    }
    docs = [{"_id": k, "title": k.title(), "text": v} for k, v in texts.items()]
    path = write_jsonl(tmp_path / "docs.jsonl", docs)
    engine = make_engine()
    engine.ingest([path])
    query = "how long should sourdough proof"
    plain = engine.search(query, mode="hybrid", top_k=5)
    engine.settings.retrieval.prf_docs = 2
    engine.settings.retrieval.prf_beta = 1.0
    fed = engine.search(query, mode="hybrid", top_k=5)
    assert fed[0].doc_id == plain[0].doc_id == "bread"
    assert {h.doc_id for h in fed} <= {d["_id"] for d in docs}
    assert all(h.text for h in fed) and len({h.chunk_id for h in fed}) == len(fed)
    assert [h.score for h in fed] == sorted((h.score for h in fed), reverse=True)
    # the answer path (query vector given, dense scores filled in) works with feedback on
    ans = engine.answer(query, mode="extractive")
    assert ans is not None
