"""Query-time fusion levers on a cached eval index (no re-ingestion), and the cross-dataset table.

Sweep one dataset: each query is embedded once and the index asked once for deep dense and
BM25 chunk lists; every fusion configuration is then computed from those lists, rolled up to
documents (identical copies that ingestion de-duplicated scored like the kept one, as in the
eval) and scored. Results go to their own JSON (``--json``, under "levers"): ``ragline eval retrieval --out``
rewrites the eval JSONs whole.

    .venv/bin/python -m bench.eval_levers --dataset ../shared/data/scifact \
        --json bench/results/levers-scifact.json

Summarise several sweeps into one table (nDCG@10 per set, the mean across sets, and the
margin of each hybrid configuration over the better single retriever of every set):

    .venv/bin/python -m bench.eval_levers --summarize bench/results/levers-*.json --md table.md

The grid (issue 4): fusion = RRF (k 10/30/60) or convex (alpha 0.3-0.7, dense weight), fused
at the chunk level (then each document keeps its best chunk) or at the document level (each
retriever's chunk list collapsed to documents first, then fused), with and without dense
pseudo-relevance feedback (PRF). Convex fusion's score scaling: min-max (``convex``), or
``convex-dbsf`` (mean +- 3 sd, the product's ``retrieval.normalization: dbsf``), ``convex-z``
(z-score) and ``convex-tmm`` (theoretical min-max: score / max), the last two bench-only.

PRF (Rocchio on the dense side): from the first fused ranking take the top ``prf_docs``
documents and the best chunk of each (chunk level: the document's top fused chunk; document
level: its top dense chunk, else its top BM25 chunk); q' = normalize(q + beta * mean of their
dense vectors); search the dense index again with q' and fuse that list with the same BM25
list, the same way. Second searches are cached per (query, feedback chunks, beta).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ragline.config import load_settings
from ragline.eval.beir import load_beir
from ragline.eval.metrics import evaluate
from ragline.eval.retrieval import RetrievalEvaluator
from ragline.index.base import IndexHit, VectorIndex
from ragline.retrieval import fusion

Vec = npt.NDArray[np.float32]


@dataclass(slots=True)
class QueryLists:
    qvec: Vec
    dense: list[IndexHit]
    sparse: list[IndexHit]


@dataclass(frozen=True, slots=True)
class Config:
    fusion: str  # "rrf" | "convex" | "dense" | "bm25"
    param: float = 0.0  # rrf k or convex alpha
    level: str = "chunk"  # "chunk" | "doc"
    cand: int = 200
    prf_docs: int = 0
    prf_beta: float = 0.0
    #: level "mix": a chunk's fused score plus ``mix`` x its document's document-level fused score
    mix: float = 0.0
    #: how PRF uses q': "search" the dense index again, or "rescore" the first-stage candidates
    #: (dense and BM25 lists) by their stored vectors
    prf_mode: str = "search"
    #: chunk level: how a document's chunks roll up: 0 = its best chunk (max); lam > 0 = the sum
    #: of its best ``rollup_k`` chunk scores, the i-th (from 0) weighted lam ** i
    rollup_lam: float = 0.0
    rollup_k: int = 1

    @property
    def name(self) -> str:
        if self.fusion in ("dense", "bm25"):
            base = f"{self.fusion} only"
        elif self.fusion == "rrf":
            base = f"{self.level} rrf k={int(self.param)}"
        else:
            base = f"{self.level} {self.fusion} a={self.param:g}"
        if self.level == "mix":
            base = base.replace("mix ", f"mix g={self.mix:g} ", 1)
        if self.rollup_lam:
            base += f" rollup top{self.rollup_k} l={self.rollup_lam:g}"
        if self.cand != 200:
            base += f" cand={self.cand}"
        if self.prf_docs:
            base += f" +prf d={self.prf_docs} b={self.prf_beta:g}"
            if self.prf_mode != "search":
                base += f" {self.prf_mode}"
        return base

    def to_dict(self) -> dict[str, Any]:
        return {
            "fusion": self.fusion,
            "param": self.param,
            "level": self.level,
            "cand": self.cand,
            "prf_docs": self.prf_docs,
            "prf_beta": self.prf_beta,
            "mix": self.mix,
            "prf_mode": self.prf_mode,
            "rollup_lam": self.rollup_lam,
            "rollup_k": self.rollup_k,
        }


def _strip(hits: Sequence[IndexHit], doc_of: dict[str, str]) -> list[IndexHit]:
    """Keep id and score only (chunk text would cost gigabytes over thousands of queries)."""
    out = []
    for h in hits:
        doc_of[h.id] = str(h.payload.get("doc_id", ""))
        out.append(IndexHit(h.id, h.score, {}))
    return out


def doc_list(hits: Sequence[IndexHit], doc_of: dict[str, str]) -> list[IndexHit]:
    """A chunk list collapsed to a document list (first = best chunk); payload keeps that chunk."""
    seen: dict[str, IndexHit] = {}
    for h in hits:
        d = doc_of[h.id]
        if d not in seen:
            seen[d] = IndexHit(d, h.score, {"chunk": h.id})
    return list(seen.values())


def _norm(hits: Sequence[IndexHit], how: str) -> dict[str, float]:
    if not hits:
        return {}
    xs = np.array([h.score for h in hits], dtype=np.float64)
    if how == "tmm":  # theoretical minimum 0 for both cosine (in practice) and BM25
        hi = float(xs.max())
        ys = xs / hi if hi > 0 else np.ones_like(xs)
    elif how == "z":
        sd = float(xs.std())
        ys = (xs - xs.mean()) / sd if sd > 0 else np.zeros_like(xs)
    else:
        raise ValueError(how)
    return {h.id: float(y) for h, y in zip(hits, ys, strict=True)}


def _peak(hits: Sequence[IndexHit]) -> float:
    """How far a list's top score stands out: (top - mean) / sd over the list."""
    xs = np.array([h.score for h in hits], dtype=np.float64)
    sd = float(xs.std()) if len(xs) > 1 else 0.0
    return float((xs[0] - xs.mean()) / sd) if sd > 0 else 1.0


def adaptive_alpha(dense: Sequence[IndexHit], sparse: Sequence[IndexHit], alpha: float) -> float:
    """Per-query dense weight: ``alpha`` moved toward the retriever whose top score stands out
    more (2 alpha x peak_d / (peak_d + peak_s), clipped to [0.2, 0.8])."""
    if not dense or not sparse:
        return alpha
    pd, ps = max(_peak(dense), 0.0), max(_peak(sparse), 0.0)
    a = 2 * alpha * pd / (pd + ps) if pd + ps > 0 else alpha
    return min(0.8, max(0.2, a))


def convex_norm(
    dense: Sequence[IndexHit], sparse: Sequence[IndexHit], alpha: float, how: str
) -> dict[str, float]:
    d, s = _norm(dense, how), _norm(sparse, how)
    dmin = min(d.values(), default=0.0) if how == "z" else 0.0
    smin = min(s.values(), default=0.0) if how == "z" else 0.0
    return {i: alpha * d.get(i, dmin) + (1 - alpha) * s.get(i, smin) for i in d.keys() | s.keys()}


def _fusion(cfg: Config, d: Sequence[IndexHit], s: Sequence[IndexHit]) -> dict[str, float]:
    if cfg.fusion == "rrf":
        return fusion.rrf([d, s], k=int(cfg.param))
    if cfg.fusion == "convex":
        return fusion.convex(d, s, alpha=cfg.param)
    if cfg.fusion == "convex-peak":
        return fusion.convex(d, s, alpha=adaptive_alpha(d, s, cfg.param))
    how = cfg.fusion.split("-", 1)[1]
    if how in fusion.NORMALIZATIONS:  # the product's own (retrieval.normalization)
        return fusion.convex(d, s, alpha=cfg.param, normalization=how)
    return convex_norm(d, s, cfg.param, how)


def _ranked(scores: dict[str, float]) -> list[str]:
    return [i for i, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def fuse(
    cfg: Config, dense: Sequence[IndexHit], sparse: Sequence[IndexHit], doc_of: dict[str, str], fb: int = 0
) -> tuple[dict[str, float], list[str]]:
    """Document scores of one configuration, and the feedback chunks of its top ``fb`` documents."""
    d, s = dense[: cfg.cand], sparse[: cfg.cand]
    if cfg.fusion in ("dense", "bm25"):
        dl = doc_list(d if cfg.fusion == "dense" else s, doc_of)
        return {h.id: h.score for h in dl}, [str(h.payload["chunk"]) for h in dl[:fb]]
    if cfg.level in ("chunk", "mix"):
        scores = _fusion(cfg, d, s)
        if cfg.level == "mix":
            dd, sd = doc_list(d, doc_of), doc_list(s, doc_of)
            dscores = _fusion(cfg, dd, sd)
            scores = {cid: v + cfg.mix * dscores.get(doc_of[cid], 0.0) for cid, v in scores.items()}
        docs: dict[str, float] = {}
        feedback: list[str] = []
        taken: dict[str, int] = {}
        for cid in _ranked(scores)[: cfg.cand]:
            doc = doc_of[cid]
            if doc not in docs:
                docs[doc] = scores[cid]
                taken[doc] = 1
                if len(feedback) < fb:
                    feedback.append(cid)
            elif cfg.rollup_lam and taken[doc] < cfg.rollup_k:
                docs[doc] += cfg.rollup_lam ** taken[doc] * scores[cid]
                taken[doc] += 1
        return docs, feedback
    dd, sd = doc_list(d, doc_of), doc_list(s, doc_of)
    docs = _fusion(cfg, dd, sd)
    best = {h.id: str(h.payload["chunk"]) for h in sd}
    best.update({h.id: str(h.payload["chunk"]) for h in dd})
    return docs, [best[doc] for doc in _ranked(docs)[:fb]]


class Prf:
    """Second dense searches with the Rocchio-expanded query, cached."""

    def __init__(self, index: VectorIndex, limit: int, doc_of: dict[str, str]) -> None:
        self.index = index
        self.limit = limit
        self.doc_of = doc_of
        self._vecs: dict[str, Vec] = {}
        self._cache: dict[tuple[str, tuple[str, ...], float], list[IndexHit]] = {}
        self.searches = 0

    def vectors(self, ids: Sequence[str]) -> list[Vec]:
        missing = [i for i in ids if i not in self._vecs]
        if missing:
            stored = self.index.points(missing, fields=(), dense=True)
            self._vecs.update({i: p.dense for i, p in stored.items() if p.dense is not None})
        return [self._vecs[i] for i in ids if i in self._vecs]

    def rescore(self, q: QueryLists, feedback: Sequence[str], beta: float, cand: int) -> list[IndexHit]:
        """q' scored against the first-stage candidates' stored vectors (no second search)."""
        vecs = self.vectors(feedback)
        if not vecs:
            return q.dense
        v = q.qvec + beta * np.mean(np.stack(vecs), axis=0)
        v = (v / (np.linalg.norm(v) or 1.0)).astype(np.float32)
        ids = list(dict.fromkeys([h.id for h in q.dense[:cand]] + [h.id for h in q.sparse[:cand]]))
        cv = self.vectors(ids)
        have = [i for i in ids if i in self._vecs]
        scores = np.stack(cv) @ v if cv else np.zeros(0)
        order = np.argsort(-scores)[:cand]
        return [IndexHit(have[j], float(scores[j]), {}) for j in order]

    def dense(self, qid: str, q: QueryLists, feedback: Sequence[str], beta: float) -> list[IndexHit]:
        key = (qid, tuple(sorted(feedback)), beta)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        vecs = self.vectors(feedback)
        if not vecs:
            self._cache[key] = q.dense
            return q.dense
        v = q.qvec + beta * np.mean(np.stack(vecs), axis=0)
        v = (v / (np.linalg.norm(v) or 1.0)).astype(np.float32)
        dense, _ = self.index.search(dense=v, text=None, limit=self.limit)
        self.searches += 1
        out = _strip(dense, self.doc_of)
        self._cache[key] = out
        return out


def grid(limit: int) -> list[Config]:
    alphas = (0.3, 0.4, 0.45, 0.5, 0.6, 0.7)
    fusions = [("rrf", float(k)) for k in (10, 30, 60)] + [("convex", a) for a in alphas]
    out = [Config("dense"), Config("bm25")]
    for prf in ((0, 0.0), (3, 0.5), (3, 1.0)):
        for level in ("chunk", "doc"):
            for f, p in fusions:
                out.append(Config(f, p, level, prf_docs=prf[0], prf_beta=prf[1]))
    # a few extra points: the product's default candidate count, a wider feedback set
    for level in ("chunk", "doc"):
        for f, p in (("rrf", 60.0), ("convex", 0.5)):
            out.append(Config(f, p, level, cand=100))
            out.append(Config(f, p, level, cand=100, prf_docs=3, prf_beta=1.0))
            out.append(Config(f, p, level, prf_docs=5, prf_beta=1.0))
            out.append(Config(f, p, level, prf_docs=1, prf_beta=1.0))
    for g in (0.25, 0.5, 1.0, 2.0):
        for a in (0.45, 0.5):
            for prf in ((0, 0.0), (3, 1.0)):
                out.append(Config("convex", a, "mix", prf_docs=prf[0], prf_beta=prf[1], mix=g))
                out.append(Config("convex", a, "mix", cand=100, prf_docs=prf[0], prf_beta=prf[1], mix=g))
    for cand in (100, 200):
        for a in (0.45, 0.5):
            for beta in (0.5, 1.0):
                out.append(
                    Config("convex", a, "chunk", cand=cand, prf_docs=3, prf_beta=beta, prf_mode="rescore")
                )
                out.append(Config("convex", a, "chunk", cand=cand, prf_docs=3, prf_beta=beta))
    for how in ("tmm", "z", "dbsf"):
        for level in ("chunk", "doc"):
            for a in (0.3, 0.4, 0.5, 0.6):
                for prf in ((0, 0.0), (3, 1.0)):
                    out.append(Config(f"convex-{how}", a, level, prf_docs=prf[0], prf_beta=prf[1]))
    # session 4: chunk scores summed into the document (top 2 / top 3), and a per-query dense weight
    for k, lam in ((2, 0.1), (2, 0.2), (2, 0.3), (3, 0.1), (2, 0.5)):
        out.append(
            Config(
                "convex",
                0.5,
                "chunk",
                prf_docs=3,
                prf_beta=1.0,
                prf_mode="rescore",
                rollup_lam=lam,
                rollup_k=k,
            )
        )
    for prf in ((0, 0.0), (3, 1.0)):
        out.append(Config("convex-peak", 0.5, "chunk", prf_docs=prf[0], prf_beta=prf[1], prf_mode="rescore"))
    return [c for c in out if c.cand <= limit]


def sweep(args: argparse.Namespace) -> None:
    ds = load_beir(args.dataset, args.split)
    with RetrievalEvaluator(ds, load_settings(args.config)) as ev:
        info = ev.prepare_index()
        if not info.reused:
            print(f"warning: index was (re)built ({info.ingest_seconds:.0f} s)")
        col = ev.engine.collection(info.collection)
        emb = ev.engine.embedder
        doc_of: dict[str, str] = {}
        per_query: dict[str, QueryLists] = {}
        t0 = time.perf_counter()
        for qid, text in ds.queries.items():
            qvec = emb.embed_queries([text])[0]
            dense, sparse = col.index.search(dense=qvec, text=text, limit=args.limit)
            per_query[qid] = QueryLists(qvec, _strip(dense, doc_of), _strip(sparse, doc_of))
        print(
            f"fetched {len(per_query)} queries x 2 lists of {args.limit} in {time.perf_counter() - t0:.1f} s"
        )
        current = ev.settings.retrieval
        prf = Prf(col.index, args.limit, doc_of)

        rows: list[dict[str, Any]] = []
        pattern = re.compile(args.only) if args.only else None
        singles = ("dense", "bm25")  # always swept: the margins are taken against them
        configs = [
            c for c in grid(args.limit) if not pattern or pattern.search(c.name) or c.fusion in singles
        ]
        for cfg in configs:
            t0 = time.perf_counter()
            run: dict[str, dict[str, float]] = {}
            for qid, q in per_query.items():
                docs, feedback = fuse(cfg, q.dense, q.sparse, doc_of, cfg.prf_docs)
                if cfg.prf_docs and cfg.prf_mode == "rescore":
                    second = prf.rescore(q, feedback, cfg.prf_beta, cfg.cand)
                    docs, _ = fuse(cfg, second, q.sparse, doc_of)
                elif cfg.prf_docs:
                    docs, _ = fuse(cfg, prf.dense(qid, q, feedback, cfg.prf_beta), q.sparse, doc_of)
                run[qid] = ev.expand(docs)
            means = evaluate(run, ds.qrels).means
            rows.append({"variant": cfg.name, **cfg.to_dict(), **{m: round(v, 4) for m, v in means.items()}})
            print(
                f"{cfg.name:36s} nDCG@10 {means['ndcg@10']:.4f}  R@10 {means['recall@10']:.4f}  "
                f"R@100 {means['recall@100']:.4f}  MRR@10 {means['mrr@10']:.4f}  "
                f"({time.perf_counter() - t0:.1f} s, {prf.searches} prf searches so far)",
                flush=True,
            )

    if args.json:
        data = json.loads(args.json.read_text()) if args.json.exists() else {}
        data["dataset"] = ds.name
        old_rows = data.get("levers", {}).get("rows", [])
        data["levers"] = {
            "note": (
                "query-time variants on the cached index; dense and BM25 chunk lists fetched once per "
                "query (limit_per_retriever), each variant uses the first `cand` of each"
            ),
            "split": args.split,
            "limit_per_retriever": args.limit,
            "current_defaults": {
                "fusion": current.fusion,
                "rrf_k": current.rrf_k,
                "candidates": current.candidates,
                "convex_alpha": current.convex_alpha,
            },
            "rows": rows,
        }
        if pattern and old_rows:  # a partial sweep: keep the rows it did not recompute
            done = {r["variant"] for r in rows}
            data["levers"]["rows"] = [r for r in old_rows if r["variant"] not in done] + rows
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")


def summarize(paths: Sequence[Path], md: Path | None, metric: str = "ndcg@10") -> str:
    """Cross-dataset table of every configuration swept on all the given levers JSONs."""
    sets: dict[str, dict[str, float]] = {}
    order: list[str] = []
    for p in paths:
        data = json.loads(p.read_text())
        lev = data.get("levers")
        if not lev:
            continue
        name = data["dataset"] + ("" if lev.get("split", "test") == "test" else f" ({lev['split']})")
        sets[name] = {r["variant"]: r[metric] for r in lev["rows"]}
        for r in lev["rows"]:
            if r["variant"] not in order:
                order.append(r["variant"])
    names = list(sets)
    common = [v for v in order if all(v in sets[n] for n in names)]
    best_single = {n: max(sets[n].get("dense only", 0.0), sets[n].get("bm25 only", 0.0)) for n in names}
    rows = []
    for v in common:
        vals = [sets[n][v] for n in names]
        margin = min(sets[n][v] - best_single[n] for n in names)
        rows.append((v, vals, statistics.fmean(vals), margin))
    rows.sort(key=lambda r: -r[2])
    head = f"| configuration | {' | '.join(names)} | mean | min margin vs best single |"
    lines = [head, "|" + "---|" * (len(names) + 3)]
    for v, vals, mean, margin in rows:
        cells = " | ".join(f"{x:.4f}" for x in vals)
        lines.append(f"| {v} | {cells} | **{mean:.4f}** | {margin:+.4f} |")
    text = "\n".join(lines) + "\n"
    if md:
        files = " ".join(str(x) for x in paths)
        md.write_text(
            f"# Fusion levers: {metric} per dataset\n\n"
            f"Generated by `.venv/bin/python -m bench.eval_levers --summarize {files} --md {md}` from the\n"
            "`levers` rows of each sweep's JSON (one sweep per dataset, cached indexes). Sorted by mean.\n"
            "Margin = the configuration minus the better of dense-only and BM25-only, on its worst set.\n\n"
            + text
        )
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=500, help="chunks fetched per retriever")
    ap.add_argument(
        "--json", type=Path, default=None, help="levers JSON to write (bench/results/levers-<dataset>.json)"
    )
    ap.add_argument("--only", default=None, help="regex: sweep only the configurations it matches")
    ap.add_argument("--summarize", type=Path, nargs="+", help="eval JSONs with levers: print the table")
    ap.add_argument("--md", type=Path, default=None, help="with --summarize: write the table here")
    args = ap.parse_args()
    if args.summarize:
        print(summarize(args.summarize, args.md))
    elif args.dataset:
        sweep(args)
    else:
        ap.error("give --dataset (sweep one set) or --summarize FILES")


if __name__ == "__main__":
    main()
