"""BM25 index-time levers without re-embedding: lexical context, k1, b, avg_len, title weight, RM3.

    .venv/bin/python -m bench.bm25_levers --dataset ../shared/data/scifact [--config YAML]

Changing a BM25 setting changes what is indexed, so the eval would re-embed the whole corpus for
each one. This bench does not: it chunks the corpus with the product's Chunker (the chunk size of
the settings, so the dense side is the same for every variant), encodes every chunk's lexical
text with the engine's own BM25 encoder (``qdrant_edge.Bm25``, the settings under test), and
scores each query as the engine does: sum over query terms of the document term weight times
IDF = ln(1 + (N - df + 0.5) / (df + 0.5)) over the chunks. The dense list comes once from the
eval's cached index for the same settings (``ragline eval retrieval`` builds it). Each list is
rolled up to documents (best chunk), and the two are fused at the document level with convex
min-max fusion at alpha 0.45 / 0.5 / 0.55: a proxy for the product's chunk-level fusion with PRF,
for comparing variants with each other (on SciFact it reads 0.003-0.004 below the product).

RM3 variants expand the BM25 query with the top terms of the feedback chunks (the top ``fb`` BM25
chunks, or the best chunk of each of the top ``fb`` dense documents), weight ``lam`` relative to
an original term.

Results: bench/results/bm25-levers-<dataset>.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import qdrant_edge as qe
import scipy.sparse as sp  # type: ignore[import-untyped]

from bench._common import SHARED_DATA, write_result
from ragline.config import Settings, load_settings
from ragline.eval.beir import BeirDataset, load_beir
from ragline.eval.metrics import evaluate
from ragline.eval.retrieval import RetrievalEvaluator
from ragline.index.base import IndexHit
from ragline.ingest.chunking import Chunker
from ragline.retrieval import fusion
from ragline.types import Chunk

ALPHAS = (0.45, 0.5, 0.55)


@dataclass(frozen=True)
class Variant:
    context: int = 48
    k: float = 1.2
    b: float = 0.75
    avg_len: float = 120.0
    title_weight: int = 1
    rm3: tuple[int, int, float] | None = None  # feedback chunks, expansion terms, weight
    rm3_from: str = "bm25"  # or "dense"

    def label(self) -> str:
        out = f"ctx={self.context} k1={self.k:g} b={self.b:g} avg={self.avg_len:g} title×{self.title_weight}"
        if self.rm3:
            out += f" rm3={self.rm3} from {self.rm3_from}"
        return out


def grid() -> list[Variant]:
    out = [Variant()]
    for ctx in (0, 32, 64, 96, 160):
        out += [Variant(context=ctx), Variant(context=ctx, title_weight=2)]
    out += [Variant(title_weight=2), Variant(title_weight=3)]
    out += [Variant(k=k) for k in (0.9, 1.5, 2.0)]
    out += [Variant(b=b) for b in (0.5, 0.9, 1.0)]
    out += [Variant(avg_len=a) for a in (60.0, 80.0, 100.0, 160.0)]
    for rm3 in ((3, 10, 0.5), (5, 10, 0.5), (3, 20, 0.3), (3, 5, 0.5), (3, 10, 1.0)):
        out += [Variant(rm3=rm3), Variant(rm3=rm3, rm3_from="dense")]
    return out


class Bench:
    def __init__(self, ds: BeirDataset, settings: Settings) -> None:
        self.ds = ds
        self.settings = settings
        with RetrievalEvaluator(ds, settings) as ev:
            info = ev.prepare_index()
            print(f"index {info.collection}: {info.chunks} chunks ({'reused' if info.reused else 'built'})")
            self.expand = ev.expand
            self.embedder = ev.engine.embedder
            col = ev.engine.collection(info.collection)
            self.dense: dict[str, list[IndexHit]] = {}
            for qid, text in ds.queries.items():
                q = self.embedder.embed_queries([text])[0]
                hits, _ = col.index.search(dense=q, text=None, limit=300, fields=("doc_id",))
                self.dense[qid] = _to_docs((str(h.payload["doc_id"]), h.score) for h in hits)
        self.docs = list(ds.iter_corpus())
        self._chunks: dict[int, list[Chunk]] = {}

    def chunks(self, context: int) -> list[Chunk]:
        if context not in self._chunks:
            c = self.settings.chunking
            chunker = Chunker(self.embedder, c.chunk_tokens, c.overlap_tokens, c.max_header_tokens, context)
            self._chunks[context] = [ch for d in self.docs for ch in chunker.chunk(d, "v")]
        return self._chunks[context]

    def ndcg(self, run: dict[str, dict[str, float]]) -> float:
        return evaluate({q: self.expand(v) for q, v in run.items()}, self.ds.qrels).means["ndcg@10"]

    def run(self, v: Variant) -> dict[str, Any]:
        chunks = self.chunks(v.context)
        bm25 = qe.Bm25(qe.Bm25Config(k=v.k, b=v.b, avg_len=v.avg_len, language="english"))
        cols: dict[int, int] = {}
        rows: list[int] = []
        idx: list[int] = []
        vals: list[float] = []
        for r, c in enumerate(chunks):
            enc = bm25.embed_document(c.lexical_text(v.title_weight))
            for term, w in zip(enc.indices, enc.values, strict=True):
                idx.append(cols.setdefault(term, len(cols)))
                rows.append(r)
                vals.append(w)
        by_row = sp.csr_matrix((vals, (rows, idx)), shape=(len(chunks), len(cols)))
        by_col = by_row.tocsc()
        df = np.diff(by_col.indptr)
        idf = np.log((len(chunks) - df + 0.5) / (df + 0.5) + 1.0)
        rows_of: dict[str, list[int]] = {}
        for r, c in enumerate(chunks):
            rows_of.setdefault(c.doc_id, []).append(r)
        sparse: dict[str, list[IndexHit]] = {}
        for qid, text in self.ds.queries.items():
            terms = [cols[t] for t in bm25.embed_query(text).indices if t in cols]
            weights = np.zeros(len(cols))
            weights[terms] = idf[terms]
            scores = by_col @ weights
            if v.rm3 and terms:
                scores = by_col @ self._rm3(v, qid, scores, weights, terms, idf, by_row, rows_of)
            top = np.argsort(-scores)[:100]
            sparse[qid] = _to_docs((chunks[t].doc_id, float(scores[t])) for t in top if scores[t] > 0)
        out: dict[str, Any] = {"variant": v.label(), **asdict(v)}
        out["bm25"] = self.ndcg({q: {h.id: h.score for h in hs} for q, hs in sparse.items()})
        for a in ALPHAS:
            out[f"fused a={a}"] = self.ndcg(
                {q: fusion.convex(self.dense[q][:100], sparse[q], alpha=a) for q in self.dense}
            )
        return out

    def _rm3(
        self,
        v: Variant,
        qid: str,
        scores: npt.NDArray[np.float64],
        weights: npt.NDArray[np.float64],
        terms: Sequence[int],
        idf: npt.NDArray[np.float64],
        by_row: sp.csr_matrix,
        rows_of: dict[str, list[int]],
    ) -> npt.NDArray[np.float64]:
        assert v.rm3 is not None
        fb, n_terms, lam = v.rm3
        if v.rm3_from == "bm25":
            feedback = [int(t) for t in np.argsort(-scores)[:fb]]
        else:  # the best BM25 chunk of each of the top dense documents
            feedback = [max(rows_of[h.id], key=lambda r: scores[r]) for h in self.dense[qid][:fb]]
        tw = np.zeros(len(weights))
        for r in feedback:
            row = by_row.getrow(r)
            if row.nnz:
                tw[row.indices] += row.data / row.data.sum()
        tw[list(terms)] = 0
        expand = np.argsort(-tw)[:n_terms]
        out = weights.copy()
        out[expand] += lam * idf[expand] * tw[expand] / max(float(tw[expand].max()), 1e-9)
        return out


def _to_docs(pairs: Any) -> list[IndexHit]:
    """Best chunk per document, in rank order."""
    seen: dict[str, float] = {}
    for doc, score in pairs:
        seen.setdefault(doc, score)
    return [IndexHit(d, s, {}) for d, s in seen.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=str(SHARED_DATA / "scifact"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--config", default=None, help="settings YAML (the dense index and the chunk size)")
    args = ap.parse_args()
    ds = load_beir(Path(args.dataset), args.split)
    bench = Bench(ds, load_settings(args.config))
    dense = bench.ndcg({q: {h.id: h.score for h in hs} for q, hs in bench.dense.items()})
    print(f"dense {dense:.4f}")
    results = []
    for v in grid():
        t0 = time.perf_counter()
        r = bench.run(v)
        results.append(r)
        fused = "  ".join(f"{a} {r[f'fused a={a}']:.4f}" for a in ALPHAS)
        print(f"{r['variant']:<55} bm25 {r['bm25']:.4f}  fused {fused}  ({time.perf_counter() - t0:.0f} s)")
    cmd = f".venv/bin/python -m bench.bm25_levers --dataset {args.dataset}" + (
        f" --config {args.config}" if args.config else ""
    )
    write_result(f"bm25-levers-{ds.name}", cmd, {"dataset": ds.name, "dense": dense, "rows": results})


if __name__ == "__main__":
    main()
