"""End-to-end RAG answers with the local model: latency, time to first token, and answer quality.

    .venv/bin/python -m bench.rag_answers [--latency-questions 50] [--xquad-limit 100]
        [--covidqa-limit 50]

1. Latency: ``--latency-questions`` xquad-en questions (evenly spaced over the set) answered in
   generate mode with the default settings (SmolLM2-135M-Instruct Q4_1 in-process through
   llama.cpp, top 3 chunks, up to 256 new tokens, temperature 0), one at a time, tokens streamed.
   Latency is the wall time of ``Engine.answer`` (query embedding, hybrid retrieval, prompt,
   generation, citation attribution); TTFT is the time to the first streamed token. Bar (issue 4):
   P95 <= 3 s.
2. Quality: ``ragline eval answers`` (``ragline.eval.answers``) on xquad-en (generate and
   extractive, ``--xquad-limit`` questions) and covidqa (both modes, ``--covidqa-limit``).
   The full per-question results go to ``bench/.cache/rag_answers/`` (gitignored).

The corpora are indexed once into the eval's cached scratch collections (shared with
``ragline eval retrieval``). The embedder and the LLM are loaded once and shared by every run.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from bench._common import REPO, SHARED_DATA, write_result
from ragline.answer.llm import build_llm
from ragline.config import load_settings
from ragline.embed.factory import build_embedder
from ragline.eval.answers import AnswerEvalResult, AnswerEvaluator, load_qa
from ragline.types import AnswerMode

CACHE = REPO / "bench" / ".cache" / "rag_answers"


def run(
    dataset: str, mode: AnswerMode, limit: int, embedder: Any, llm: Any, threads_batch: int | None = None
) -> AnswerEvalResult:
    settings = load_settings()
    if threads_batch is not None:
        settings.llm.threads_batch = threads_batch
    ds = load_qa(SHARED_DATA / dataset)
    with AnswerEvaluator(ds, settings, embedder=embedder, llm=llm) as ev:
        info = ev.prepare_index()
        state = "reused" if info.reused else f"built in {info.ingest_seconds:.0f} s"
        print(f"[{dataset}] index {info.collection}: {info.chunks} chunks ({state})", flush=True)
        load = os.getloadavg()[0]
        result = ev.evaluate(
            mode,
            limit=limit,
            on_question=lambda i, n: (
                print(f"  {dataset} {mode} {i}/{n}", flush=True) if i % 10 == 0 else None
            ),
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"{dataset}-{mode}-{limit}.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    m = result.metrics()
    print(
        f"[{dataset} {mode} n={limit}] EM {m['exact_match']:.3f} F1 {m['f1']:.3f} "
        f"contains {m['contains']:.3f} "
        f"not-found {m['not_found']:.3f} cite-prec {m['citation_precision']} latency {m['latency_ms']} "
        f"ttft {m['ttft_ms']} (load {load:.1f} -> {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return result


def summary(result: AnswerEvalResult) -> dict[str, Any]:
    return {
        "dataset": result.dataset,
        "mode": result.mode,
        "questions": len(result.questions),
        "index_chunks": result.index.chunks,
        **result.metrics(),
    }


def latency_section(lat: AnswerEvalResult, load_before: float) -> dict[str, Any]:
    lm = lat.metrics()
    return {
        "dataset": "xquad-en",
        "mode": "generate",
        "questions": len(lat.questions),
        "llm": lat.settings["llm"],
        "answer_max_tokens": lat.settings["answer"]["max_tokens"],
        "latency_ms": lm["latency_ms"],
        "ttft_ms": lm["ttft_ms"],
        "retrieval_ms": lm["retrieval_ms"],
        "prompt_tokens_mean": lm["prompt_tokens_mean"],
        "completion_tokens_mean": lm["completion_tokens_mean"],
        "not_found": lm["not_found"],
        "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-questions", type=int, default=50)
    ap.add_argument("--xquad-limit", type=int, default=100)
    ap.add_argument("--covidqa-limit", type=int, default=50)
    ap.add_argument(
        "--threads-batch",
        default=None,
        help="comma list: measure latency once per llm.threads_batch value (same questions, one "
        "after the other) and write bench/results/rag_latency_threads.json; no quality runs",
    )
    args = ap.parse_args()
    settings = load_settings()
    embedder = build_embedder(settings.embedder)

    if args.threads_batch:
        variants = []
        for tb in (int(x) for x in args.threads_batch.split(",")):
            llm = build_llm(settings.llm.model_copy(update={"threads_batch": tb}))
            load_before = os.getloadavg()[0]
            lat = run("xquad-en", "generate", args.latency_questions, embedder, llm, threads_batch=tb)
            variants.append({"threads_batch": tb, **latency_section(lat, load_before)})
            del llm
        cmd = (
            f".venv/bin/python -m bench.rag_answers --latency-questions {args.latency_questions} "
            f"--threads-batch {args.threads_batch}"
        )
        out = write_result("rag_latency_threads", cmd, {"variants": variants})
        for v in variants:
            print(f"threads_batch={v['threads_batch']}: latency {v['latency_ms']} TTFT {v['ttft_ms']}")
        print(out)
        return

    llm = build_llm(settings.llm)
    load_before = os.getloadavg()[0]
    lat = run("xquad-en", "generate", args.latency_questions, embedder, llm)
    latency = latency_section(lat, load_before)
    p95 = latency["latency_ms"]["p95"]
    quality = []
    for dataset, limit in (("xquad-en", args.xquad_limit), ("covidqa", args.covidqa_limit)):
        for mode in ("generate", "extractive"):
            quality.append(summary(run(dataset, mode, limit, embedder, llm)))
    cmd = (
        f".venv/bin/python -m bench.rag_answers --latency-questions {args.latency_questions} "
        f"--xquad-limit {args.xquad_limit} --covidqa-limit {args.covidqa_limit}"
    )
    out = write_result(
        "rag_answers",
        cmd,
        {
            "latency": latency,
            "bar": {"p95_ms_max": 3000, "met": p95 is not None and p95 <= 3000},
            "quality": quality,
            "citation_support": "token containment, threshold 0.5 (see ragline.eval.answers)",
        },
    )
    print(
        f"latency P50 {latency['latency_ms']['p50']} ms, P95 {p95} ms (bar 3000), "
        f"TTFT {latency['ttft_ms']} -> {out}"
    )


if __name__ == "__main__":
    main()
