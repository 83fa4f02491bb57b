"""Ingestion throughput: end-to-end chunks/s against the raw embedder's passages/s on the same texts.

    .venv/bin/python -m bench.ingest_throughput [--docs 600] [--rounds 3]

Each round: (1) ingest N scifact documents into a fresh collection (parse, dedup,
chunk, embed, BM25, index, journal) and (2) embed exactly the chunk texts that
ingestion produced with the bare embedder. Rounds alternate the order so drift on
a noisy machine hits both sides; the reported ratio is the median of the per-round
(paired) ratios. Bar (issue 4): ingestion >= 90% of the raw rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench._common import SHARED_DATA, median, read_jsonl, write_result
from ragline import Engine
from ragline.config import EmbedderSettings, load_settings
from ragline.embed.factory import build_embedder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    corpus = SHARED_DATA / "scifact" / "corpus.jsonl"
    rows = read_jsonl(corpus, args.docs)
    tmp = Path(tempfile.mkdtemp(prefix="ragline-bench-"))
    src = tmp / "corpus.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    embedder = build_embedder(EmbedderSettings())
    embedder.embed_documents(["warm up"] * 8)
    ingest_rates, raw_rates, ratios = [], [], []
    # the exact texts the embedder sees during ingestion
    from ragline.ingest.chunking import Chunker
    from ragline.ingest.parsers import iter_jsonl

    chunker = Chunker(embedder, **load_settings(data_dir=tmp / "x").chunking.model_dump())
    texts: list[str] = []
    for doc in iter_jsonl(src):
        if not isinstance(doc, Exception):
            texts.extend(c.embedding_text() for c in chunker.chunk(doc, "v"))

    def ingest(rnd: int) -> tuple[int, float]:
        data = tmp / f"data{rnd}"
        with Engine(load_settings(data_dir=data), embedder=embedder) as engine:
            t0 = time.perf_counter()
            report = engine.ingest([src], collection="bench")
            seconds = time.perf_counter() - t0
        shutil.rmtree(data, ignore_errors=True)
        return report.chunks, seconds

    def raw() -> float:
        t0 = time.perf_counter()
        embedder.embed_documents(texts)
        return time.perf_counter() - t0

    for rnd in range(args.rounds):
        if rnd % 2 == 0:  # alternate which side goes first, so drift hits both alike
            chunks, ingest_s = ingest(rnd)
            raw_s = raw()
        else:
            raw_s = raw()
            chunks, ingest_s = ingest(rnd)
        if chunks != len(texts):
            raise SystemExit(f"ingestion made {chunks} chunks, the chunker {len(texts)}")
        ingest_rates.append(chunks / ingest_s)
        raw_rates.append(len(texts) / raw_s)
        ratios.append(ingest_rates[-1] / raw_rates[-1])
        print(
            f"round {rnd}: ingest {chunks} chunks in {ingest_s:.1f}s = {ingest_rates[-1]:.1f}/s; "
            f"raw embed {len(texts)} in {raw_s:.1f}s = {raw_rates[-1]:.1f}/s; ratio {ratios[-1]:.3f}",
            flush=True,
        )
    ratio = median(ratios)
    print(
        f"median ingest {median(ingest_rates):.1f} chunks/s, raw {median(raw_rates):.1f}/s, "
        f"median paired ratio {ratio:.3f}"
    )
    write_result(
        "ingest_throughput",
        f".venv/bin/python -m bench.ingest_throughput --docs {args.docs} --rounds {args.rounds}",
        {
            "docs": args.docs,
            "chunks": len(texts),
            "ingest_chunks_per_s": ingest_rates,
            "raw_passages_per_s": raw_rates,
            "median_ingest_chunks_per_s": median(ingest_rates),
            "median_raw_passages_per_s": median(raw_rates),
            "paired_ratios": ratios,
            "ratio": ratio,
            "ratio_of_medians": median(ingest_rates) / median(raw_rates),
            "bar": 0.9,
        },
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
