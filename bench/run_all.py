"""Run every benchmark in turn (`make bench`); each writes its JSON to bench/results/.

    .venv/bin/python -m bench.run_all [--only NAME ...]

This takes a long while on a 2-core machine (the retrieval evals ingest five corpora the
first time; later runs reuse the cached indexes). Run it on an otherwise idle machine: the
figures are only comparable side by side within one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench._common import SHARED_DATA

PY = sys.executable
DATASETS = ("scifact", "nfcorpus", "cranfield", "xquad-en", "covidqa")


def _eval(dataset: str, config: str | None = None, suffix: str = "") -> list[str]:
    extra = ["--config", config] if config else []
    return [
        str(Path(PY).parent / "ragline"),
        "eval",
        "retrieval",
        "--dataset",
        str(SHARED_DATA / dataset),
        "--mode",
        "all",
        *extra,
        "--out",
        f"bench/results/eval-{dataset}{suffix}.json",
    ]


BENCHES: dict[str, list[str]] = {
    "local_model_throughput": [PY, "-m", "bench.local_model_throughput"],
    "gateway_overhead": [PY, "-m", "bench.gateway_overhead"],
    "ingest_throughput": [PY, "-m", "bench.ingest_throughput"],
    "search_latency": [PY, "-m", "bench.search_latency"],
    "rag_answers": [PY, "-m", "bench.rag_answers"],
    **{f"eval-{d}": _eval(d) for d in DATASETS},
    # the fusion lever sweeps on the eval indexes just built, and their cross-dataset table
    **{
        f"levers-{d}": [
            PY,
            "-m",
            "bench.eval_levers",
            "--dataset",
            str(SHARED_DATA / d),
            "--json",
            f"bench/results/levers-{d}.json",
        ]
        for d in DATASETS
    },
    # a second shipped embedder as a third retriever: GloVe-50 beside MiniLM and BM25
    **{
        f"third-retriever-{d}": [
            PY,
            "-m",
            "bench.third_retriever",
            "--dataset",
            str(SHARED_DATA / d),
            "--json",
            f"bench/results/third-retriever-{d}.json",
        ]
        for d in DATASETS
    },
    # the shipped model's fp32 weights in place of the int8 file (exported once, in its own venv)
    "minilm-fp32-export": ["bash", "bench/minilm_fp32_setup.sh"],
    **{
        f"eval-{d}-minilm-fp32": _eval(d, "bench/configs/embedder-minilm-fp32.yaml", "-minilm-fp32")
        for d in ("scifact", "nfcorpus")
    },
    # BM25's index-time settings on SciFact, re-scored without re-embedding
    "bm25-levers-scifact": [PY, "-m", "bench.bm25_levers", "--dataset", str(SHARED_DATA / "scifact")],
    "levers-summary": [
        PY,
        "-m",
        "bench.eval_levers",
        "--summarize",
        *[f"bench/results/levers-{d}.json" for d in DATASETS],
        "--md",
        "bench/results/eval-levers.md",
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    args = ap.parse_args()
    failed = []
    for name, cmd in BENCHES.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
