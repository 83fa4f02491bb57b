"""Ingestion throughput: end-to-end chunks/s against the raw embedder's passages/s on the same texts.

    .venv/bin/python -m bench.ingest_throughput [--docs 600] [--rounds 3] [--slices 1]

The N scifact documents are cut into ``--slices`` slices. Each round, for each slice: (1) ingest
it into a fresh collection (parse, dedup, chunk, embed, BM25, index, journal) and (2) embed
exactly the chunk texts that ingestion produced with the bare embedder. Pairs alternate the order
so drift on a noisy machine hits both sides, and short pairs keep both sides of a pair close in
time; the reported ratio is the median of the paired ratios (the ratio of the total times is
recorded too). Each slice goes into a collection created just before the timed ingestion: the
creation (~0.1 s) is paid once per collection, not per batch of documents.
Bar (issue 4): ingestion >= 90% of the raw rate.
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
    ap.add_argument("--slices", type=int, default=1, help="pairs per round: the docs cut into this many")
    args = ap.parse_args()
    corpus = SHARED_DATA / "scifact" / "corpus.jsonl"
    rows = read_jsonl(corpus, args.docs)
    tmp = Path(tempfile.mkdtemp(prefix="ragline-bench-"))
    embedder = build_embedder(EmbedderSettings())
    embedder.embed_documents(["warm up"] * 8)
    # the exact texts the embedder sees during ingestion, per slice
    from ragline.ingest.chunking import Chunker
    from ragline.ingest.parsers import iter_jsonl

    chunker = Chunker.from_settings(embedder, load_settings(data_dir=tmp / "x").chunking)
    size = -(-len(rows) // args.slices)
    slices: list[tuple[Path, list[str]]] = []
    for k in range(0, len(rows), size):
        src = tmp / f"corpus{k}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows[k : k + size]))
        texts: list[str] = []
        for doc in iter_jsonl(src):
            if not isinstance(doc, Exception):
                texts.extend(c.embedding_text() for c in chunker.chunk(doc, "v"))
        slices.append((src, texts))

    def ingest(src: Path, tag: str) -> tuple[int, float]:
        data = tmp / f"data-{tag}"
        with Engine(load_settings(data_dir=data), embedder=embedder) as engine:
            # creating the collection (shard, payload indexes, registry: ~0.1 s) is a one-time
            # cost that a slice of 25 documents would otherwise pay every time; it is left out
            engine.collection("bench", create=True)
            t0 = time.perf_counter()
            report = engine.ingest([src], collection="bench")
            seconds = time.perf_counter() - t0
        shutil.rmtree(data, ignore_errors=True)
        return report.chunks, seconds

    def raw(texts: list[str]) -> float:
        t0 = time.perf_counter()
        embedder.embed_documents(texts)
        return time.perf_counter() - t0

    ingest_rates, raw_rates, ratios = [], [], []
    ingest_total = raw_total = 0.0
    chunks_total = 0
    pair = 0
    for rnd in range(args.rounds):
        for k, (src, texts) in enumerate(slices):
            if pair % 2 == 0:  # alternate which side goes first, so drift hits both alike
                chunks, ingest_s = ingest(src, f"{rnd}-{k}")
                raw_s = raw(texts)
            else:
                raw_s = raw(texts)
                chunks, ingest_s = ingest(src, f"{rnd}-{k}")
            pair += 1
            if chunks != len(texts):
                raise SystemExit(f"ingestion made {chunks} chunks, the chunker {len(texts)}")
            ingest_total += ingest_s
            raw_total += raw_s
            chunks_total += chunks
            ingest_rates.append(chunks / ingest_s)
            raw_rates.append(len(texts) / raw_s)
            ratios.append(ingest_rates[-1] / raw_rates[-1])
            print(
                f"round {rnd} slice {k}: ingest {chunks} chunks in {ingest_s:.1f}s "
                f"= {ingest_rates[-1]:.1f}/s; "
                f"raw embed in {raw_s:.1f}s = {raw_rates[-1]:.1f}/s; ratio {ratios[-1]:.3f}",
                flush=True,
            )
    ratio = median(ratios)
    print(
        f"ingest {chunks_total / ingest_total:.1f} chunks/s, raw {chunks_total / raw_total:.1f}/s overall; "
        f"median paired ratio {ratio:.3f} over {len(ratios)} pairs, "
        f"ratio of totals {raw_total / ingest_total:.3f}"
    )
    write_result(
        "ingest_throughput",
        f".venv/bin/python -m bench.ingest_throughput --docs {args.docs} --rounds {args.rounds} "
        f"--slices {args.slices}",
        {
            "docs": args.docs,
            "chunks": sum(len(t) for _, t in slices),
            "slices": args.slices,
            "ingest_chunks_per_s": ingest_rates,
            "raw_passages_per_s": raw_rates,
            "ingest_chunks_per_s_overall": chunks_total / ingest_total,
            "raw_passages_per_s_overall": chunks_total / raw_total,
            "paired_ratios": ratios,
            "ratio": ratio,
            "ratio_of_totals": raw_total / ingest_total,
            "bar": 0.9,
        },
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
