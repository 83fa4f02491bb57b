"""Query-time fusion levers on a cached eval index (no re-ingestion).

Each query is embedded once and the index asked once for deep dense and BM25 chunk lists;
every fusion variant is then computed from those lists, rolled up to documents (max) and
scored. Results are merged into the eval JSON under "levers".

    .venv/bin/python -m bench.eval_levers --dataset ../shared/data/scifact \
        --json bench/results/eval-scifact.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragline.config import load_settings
from ragline.eval.beir import load_beir
from ragline.eval.metrics import evaluate
from ragline.eval.retrieval import RetrievalEvaluator
from ragline.index.base import IndexHit
from ragline.retrieval import fusion

Lists = tuple[list[IndexHit], list[IndexHit]]


def _doc_of(h: IndexHit) -> str:
    return str(h.payload.get("doc_id", ""))


def roll_up_scores(scores: dict[str, float], doc_of: dict[str, str], depth: int) -> dict[str, float]:
    """Fused chunk scores -> top ``depth`` chunks -> best chunk per document."""
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
    docs: dict[str, float] = {}
    for cid, s in ranked:
        d = doc_of[cid]
        if d not in docs or s > docs[d]:
            docs[d] = s
    return docs


def doc_list(hits: Sequence[IndexHit]) -> list[IndexHit]:
    """A chunk list collapsed to a document list (first = best chunk), ids = doc ids."""
    seen: dict[str, IndexHit] = {}
    for h in hits:
        d = _doc_of(h)
        if d not in seen:
            seen[d] = IndexHit(d, h.score, {})
    return list(seen.values())


Variant = Callable[[Lists, dict[str, str]], dict[str, float]]


def chunk_rrf(k: int, cand: int, w_dense: float = 1.0, w_bm25: float = 1.0, depth: int = 200) -> Variant:
    def f(lists: Lists, doc_of: dict[str, str]) -> dict[str, float]:
        d, s = lists[0][:cand], lists[1][:cand]
        return roll_up_scores(fusion.rrf([d, s], k=k, weights=[w_dense, w_bm25]), doc_of, depth)

    return f


def chunk_convex(alpha: float, cand: int, depth: int = 200) -> Variant:
    def f(lists: Lists, doc_of: dict[str, str]) -> dict[str, float]:
        return roll_up_scores(fusion.convex(lists[0][:cand], lists[1][:cand], alpha=alpha), doc_of, depth)

    return f


def doc_rrf(k: int, cand: int) -> Variant:
    """Collapse each retriever's chunks to documents first, then fuse document ranks."""

    def f(lists: Lists, doc_of: dict[str, str]) -> dict[str, float]:
        return fusion.rrf([doc_list(lists[0][:cand]), doc_list(lists[1][:cand])], k=k)

    return f


def doc_convex(alpha: float, cand: int) -> Variant:
    def f(lists: Lists, doc_of: dict[str, str]) -> dict[str, float]:
        return fusion.convex(doc_list(lists[0][:cand]), doc_list(lists[1][:cand]), alpha=alpha)

    return f


def single(which: int, cand: int) -> Variant:
    def f(lists: Lists, doc_of: dict[str, str]) -> dict[str, float]:
        return {h.id: h.score for h in doc_list(lists[which][:cand])}

    return f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=500, help="chunks fetched per retriever")
    ap.add_argument("--json", type=Path, default=None, help="eval JSON to add a 'levers' key to")
    args = ap.parse_args()

    ds = load_beir(args.dataset, args.split)
    with RetrievalEvaluator(ds, load_settings(args.config)) as ev:
        info = ev.prepare_index()
        if not info.reused:
            print(f"warning: index was (re)built ({info.ingest_seconds:.0f} s)")
        col = ev.engine.collection(info.collection)
        emb = ev.engine.embedder
        per_query: dict[str, Lists] = {}
        doc_of: dict[str, str] = {}
        t0 = time.perf_counter()
        for qid, text in ds.queries.items():
            qvec = emb.embed_queries([text])[0]
            dense, sparse = col.index.search(dense=qvec, text=text, limit=args.limit)
            per_query[qid] = (dense, sparse)
            for h in (*dense, *sparse):
                doc_of[h.id] = _doc_of(h)
        print(
            f"fetched {len(per_query)} queries x 2 lists of {args.limit} in {time.perf_counter() - t0:.1f} s"
        )
        current = ev.settings.retrieval

    variants: dict[str, Variant] = {
        "dense (doc max)": single(0, args.limit),
        "bm25 (doc max)": single(1, args.limit),
    }
    for k in (10, 30, 60, 100):
        for cand in (50, 100, 200, 500):
            variants[f"chunk rrf k={k} cand={cand}"] = chunk_rrf(k, cand)
    for w in (0.5, 0.7, 1.5, 2.0):
        variants[f"chunk rrf k=60 cand=200 w_bm25={w}"] = chunk_rrf(60, 200, w_bm25=w)
    for alpha in (0.3, 0.4, 0.5, 0.6, 0.7):
        for cand in (100, 200):
            variants[f"chunk convex alpha={alpha} cand={cand}"] = chunk_convex(alpha, cand)
    for k in (10, 30, 60, 100):
        for cand in (100, 200, 500):
            variants[f"doc rrf k={k} cand={cand}"] = doc_rrf(k, cand)
    for alpha in (0.3, 0.4, 0.5, 0.6):
        variants[f"doc convex alpha={alpha} cand=200"] = doc_convex(alpha, 200)

    rows: list[dict[str, Any]] = []
    for name, fn in variants.items():
        run = {qid: fn(lists, doc_of) for qid, lists in per_query.items()}
        means = evaluate(run, ds.qrels).means
        rows.append({"variant": name, **{m: round(v, 4) for m, v in means.items()}})
        print(
            f"{name:42s} nDCG@10 {means['ndcg@10']:.4f}  R@10 {means['recall@10']:.4f}  "
            f"R@100 {means['recall@100']:.4f}  MRR@10 {means['mrr@10']:.4f}"
        )

    if args.json:
        data = json.loads(args.json.read_text()) if args.json.exists() else {}
        data["levers"] = {
            "note": "query-time variants on the cached index; chunk lists fetched once per query",
            "limit_per_retriever": args.limit,
            "current_defaults": {
                "fusion": current.fusion,
                "rrf_k": current.rrf_k,
                "candidates": current.candidates,
                "convex_alpha": current.convex_alpha,
            },
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
