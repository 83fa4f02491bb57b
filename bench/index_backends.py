"""Search latency on the two index backends side by side: edge and qdrant in qdrant-client's local mode.

    .venv/bin/python -m bench.index_backends [--chunks 100000] [--queries 200]
    RAGLINE_DATA_DIR=... .venv/bin/python -m bench.index_backends --dataset ../shared/data/scifact \
        --config bench/configs/index-qdrant-local.yaml [--queries 300]

With ``--dataset``, the two indexes are the eval's scratch collections of that dataset: edge's as
``ragline eval retrieval`` built it, qdrant's as bench/copy_index.py copied it (in local mode in
its folder), and the queries are the dataset's evaluated queries (the first ``--queries``). Without
it: the chunks, their embeddings and the edge index are bench/search_latency.py's (real text of the
corpora in ../shared/data at sentence size, cached under ``bench/.cache/search_latency/``); the
queries are its real questions, embedded first. The qdrant index gets the same points (vectors,
BM25 text, payloads) through ``QdrantIndex`` in local mode, in memory (``index.path: ":memory:"``;
a folder changes how writes are stored, not how searches run).

Timed: ``Retriever.search(..., query_vector=q)`` with the shipped retrieval settings (hybrid: the
dense and BM25 candidate searches, 100 each, fusion, PRF rescoring, the payloads of the top 5),
one query at a time, the two backends interleaved query by query in alternating order (a paired
comparison: drift on a shared machine hits both alike); then dense only and BM25 only the same
way. Also how often the backends agree: the overlap of their hybrid top 5 (edge's dense search is
HNSW, local mode's is exact, so a few differ).

What local mode is (checked in qdrant-client 1.20.0's qdrant_client/local/): the client's own
Python implementation of the API, in this process. Every dense search is an exact numpy scan of
all points (``search_params`` are ignored, with a warning), a BM25 search computes a sparse dot
product point by point in a Python loop, and payload indexes are accepted and ignored. It is not
a measure of a Qdrant server, which serves HNSW and an inverted sparse index from Rust.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import percentile, write_result
from bench.search_latency import (
    CACHE,
    _point_id,
    build_chunks,
    embed_cached,
    ensure_index,
    load_queries,
    open_index,
    texts_key,
)
from ragline.config import EmbedderSettings, RetrievalSettings, load_settings
from ragline.embed.factory import build_embedder
from ragline.engine import Engine
from ragline.eval.beir import load_beir
from ragline.eval.retrieval import collection_name, eval_settings, index_key
from ragline.index.base import IndexPoint, VectorIndex
from ragline.index.qdrant import MEMORY, QdrantIndex, connect
from ragline.retrieval.retriever import Retriever


def _stats(lat: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(lat, 0.5), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "mean_ms": round(float(np.mean(lat)), 2),
    }


def paired(
    retriever: Retriever, indexes: dict[str, VectorIndex], texts: list[str], qvecs: Any, mode: str
) -> tuple[dict[str, list[float]], dict[str, list[list[str]]]]:
    names = list(indexes)
    lat: dict[str, list[float]] = {n: [] for n in names}
    tops: dict[str, list[list[str]]] = {n: [] for n in names}
    for i, (text, q) in enumerate(zip(texts, qvecs, strict=True)):
        for name in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            hits = retriever.search(indexes[name], text, query_vector=q, mode=mode)  # type: ignore[arg-type]
            lat[name].append((time.perf_counter() - t0) * 1000)
            tops[name].append([h.chunk_id for h in hits])
    return lat, tops


def build_chunk_indexes(
    n: int, embedder: Any, settings: RetrievalSettings
) -> tuple[VectorIndex, VectorIndex]:
    """bench/search_latency.py's edge index of ``n`` chunks, and the same points in qdrant local mode."""
    chunks = build_chunks(n)
    texts = [c["text"] for c in chunks]
    key = texts_key(texts)
    vecs = embed_cached(embedder, texts, key)
    payloads: list[dict[str, Any]] = [
        {
            "doc_id": f"{c['dataset']}:{c['doc_id']}",
            "source": c["dataset"],
            "text": c["text"],
            "chunk_index": i,
        }
        for i, c in enumerate(chunks)
    ]
    ensure_index(f"index-{embedder.name}-{key}", vecs, texts, payloads, False)  # built once, cached
    edge = open_index(CACHE / f"index-{embedder.name}-{key}", vecs.shape[1], settings.hnsw_ef)
    print(f"[qdrant] loading {len(vecs)} points into local mode (in memory)", flush=True)
    qdrant = QdrantIndex(
        connect(None, MEMORY, CACHE), f"bench-{key}", vecs.shape[1], hnsw_ef=settings.hnsw_ef
    )
    t0 = time.perf_counter()
    for start in range(0, len(vecs), 1000):
        qdrant.upsert(
            [
                IndexPoint(_point_id(i), vecs[i], texts[i], payloads[i])
                for i in range(start, min(start + 1000, len(vecs)))
            ]
        )
    print(f"[qdrant] upserted in {time.perf_counter() - t0:.0f} s", flush=True)
    return edge, qdrant


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dataset", help="use this dataset's eval collections (edge, and qdrant's copy)")
    ap.add_argument("--config", help="with --dataset: the qdrant settings")
    args = ap.parse_args()
    cmd = f".venv/bin/python -m bench.index_backends --chunks {args.chunks} --queries {args.queries}"

    settings = RetrievalSettings()
    embedder = build_embedder(EmbedderSettings())
    engines: list[Engine] = []
    if args.dataset:
        if not args.config:
            raise SystemExit("--dataset needs --config (the qdrant settings the copy was made with)")
        cmd = (
            f"RAGLINE_DATA_DIR=... .venv/bin/python -m bench.index_backends --dataset {args.dataset} "
            f"--config {args.config} --queries {args.queries}"
        )
        ds = load_beir(args.dataset)
        found = []
        for s in (eval_settings(load_settings()), eval_settings(load_settings(args.config))):
            engine = Engine(s, embedder=embedder)
            engines.append(engine)
            found.append(engine.collection(collection_name(ds, index_key(ds, s, embedder.name))).index)
        edge, qdrant = found
        settings = engines[0].settings.retrieval
        qtexts = list(ds.queries.values())[: args.queries]
        source: dict[str, Any] = {"dataset": str(args.dataset), "chunks": edge.count()}
    else:
        edge, qdrant = build_chunk_indexes(args.chunks, embedder, settings)
        qtexts = load_queries(args.queries)
        source = {"chunks": edge.count()}
    assert isinstance(qdrant, QdrantIndex) and qdrant.count() == edge.count()
    qvecs = embedder.embed_queries(qtexts)
    retriever = Retriever(embedder, settings)
    indexes: dict[str, VectorIndex] = {"edge": edge, "qdrant_local": qdrant}
    paired(retriever, indexes, qtexts[:10], qvecs[:10], "hybrid")  # warm-up, untimed

    result: dict[str, Any] = {
        **source,
        "queries": len(qtexts),
        "embedder": embedder.name,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "retrieval": settings.model_dump(),
        "local_mode": (
            "qdrant-client 1.20.0 local mode, in this process (in memory, or its folder with --dataset): "
            "exact numpy scan for dense, a Python loop over every point for BM25, payload indexes ignored"
        ),
    }
    for mode in ("hybrid", "dense", "bm25"):
        lat, tops = paired(retriever, indexes, qtexts, qvecs, mode)
        row: dict[str, Any] = {name: _stats(v) for name, v in lat.items()}
        overlap = [
            len(set(a) & set(b)) / max(1, len(a))
            for a, b in zip(tops["edge"], tops["qdrant_local"], strict=True)
        ]
        row["top5_overlap"] = round(float(np.mean(overlap)), 4)
        result[mode] = row
        print(
            f"  {mode}: edge P50 {row['edge']['p50_ms']} ms P99 {row['edge']['p99_ms']} ms | qdrant local "
            f"P50 {row['qdrant_local']['p50_ms']} ms P99 {row['qdrant_local']['p99_ms']} ms | top-5 overlap "
            f"{row['top5_overlap']}",
            flush=True,
        )
    for engine in engines:
        engine.close()
    if not engines:
        edge.close()
        qdrant.close()
    result["run"] = {
        "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }
    name = f"index_backends_{Path(args.dataset).name}" if args.dataset else f"index_backends_{args.chunks}"
    out = write_result(name, cmd, result)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
