"""Copy an eval's scratch collection from the edge index into the qdrant index, point for point.

    RAGLINE_DATA_DIR=... .venv/bin/python -m bench.copy_index --dataset ../shared/data/scifact \
        --config bench/configs/index-qdrant-local.yaml

``ragline eval retrieval`` on the qdrant backend then finds its scratch collection complete (every
document unchanged: nothing is embedded again) and runs its queries against the Qdrant copy. The
copy holds exactly what edge holds: the same ids, the same stored vectors, the same payloads, and
the same BM25 text (rebuilt from the payload the way ingestion built it: header + chunk window,
the title repeated ``chunking.lexical_title_weight`` times), encoded by the same Bm25Encoder. So
the two evals differ in the index alone; and the corpus is embedded once, not twice (20k chunks
of SciFact take most of an hour on the shared 2-core machine). Ingesting through the qdrant
backend itself is covered by tests/test_index_backends.py.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import time
from typing import Any

from ragline.collection import collections_root
from ragline.config import load_settings
from ragline.embed.factory import build_embedder
from ragline.engine import Engine
from ragline.eval.beir import load_beir
from ragline.eval.retrieval import collection_name, eval_settings, index_key
from ragline.index.base import IndexPoint
from ragline.types import Chunk

BATCH = 500


def lexical_text(payload: dict[str, Any], title_weight: int) -> str:
    chunk = Chunk(
        chunk_id="",
        doc_id=str(payload["doc_id"]),
        index=int(payload["chunk_index"]),
        text=str(payload["text"]),
        title=str(payload.get("title") or ""),
        section=str(payload.get("section") or ""),
        page=payload.get("page"),
        n_tokens=int(payload.get("n_tokens") or 0),
        context=str(payload.get("window") or ""),
    )
    return chunk.lexical_text(title_weight)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--config", required=True, help="the settings of the target (index.kind: qdrant)")
    args = ap.parse_args()
    # the settings the evals index with (eval_settings: near-duplicates are kept)
    source_settings = eval_settings(load_settings())
    target_settings = eval_settings(load_settings(args.config))
    if source_settings.index.kind != "edge" or target_settings.index.kind != "qdrant":
        raise SystemExit("copies from index.kind edge (the environment's settings) to qdrant (--config)")
    ds = load_beir(args.dataset, args.split)
    embedder = build_embedder(source_settings.embedder)
    src = collection_name(ds, index_key(ds, source_settings, embedder.name))
    dst = collection_name(ds, index_key(ds, target_settings, embedder.name))
    src_dir = collections_root(source_settings) / src
    dst_dir = collections_root(target_settings) / dst
    if not (src_dir / "registry.sqlite").exists():
        raise SystemExit(f"no edge collection {src} yet: run `ragline eval retrieval` on edge first")
    if dst_dir.exists():
        raise SystemExit(f"{dst_dir} exists already")
    t0 = time.perf_counter()
    with Engine(source_settings, embedder=embedder) as source:
        col = source.collection(src)
        dst_dir.mkdir(parents=True)
        # the registry, as it is (documents, versions, chunk ids), now on the qdrant index
        a, b = sqlite3.connect(src_dir / "registry.sqlite"), sqlite3.connect(dst_dir / "registry.sqlite")
        try:
            a.backup(b)
            b.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('index', 'qdrant')")
            b.commit()
        finally:
            a.close()
            b.close()
        ids = [cid for r in col.registry.list_documents(limit=10**9) for cid in r.chunk_ids]
        weight = source_settings.chunking.lexical_title_weight
        try:
            with Engine(target_settings, embedder=embedder) as target:
                out = target.collection(dst)
                for start in range(0, len(ids), BATCH):
                    stored = col.index.points(ids[start : start + BATCH], dense=True)
                    points = []
                    for cid, p in stored.items():
                        assert p.dense is not None
                        points.append(IndexPoint(cid, p.dense, lexical_text(p.payload, weight), p.payload))
                    out.index.upsert(points)
                out.index.flush()
                copied, total = out.index.count(), col.index.count()
        except BaseException:
            shutil.rmtree(dst_dir, ignore_errors=True)
            raise
    print(f"copied {copied} of {total} points {src} -> {dst} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
