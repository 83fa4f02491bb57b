"""Is a semantic hit's RAG answer the one a fresh answer would give? (issue 13)

    .venv/bin/python -m bench.cache_rag_correctness [--limit 300] [--dataset xquad-en --dataset covidqa]

For each data set (../shared/data, BEIR layout with answers.jsonl) the corpus is indexed once with
the shipped defaults (``ragline eval``'s cached scratch collection), and ``--limit`` questions,
evenly spaced, are answered in extractive mode (deterministic, and fast on these cores) and stored
in a ``ResponseCache`` (the in-process store, the shipped threshold and second check). Then each
question is rewritten by the rules below, and every rewrite is looked up. For each semantic hit the
rewrite is answered afresh too, and the two are compared: the same cited documents (as a set; two
"not found" answers agree) is a correct hit. Reported per set and rule: rewrites, hits, agreement,
and two looser readings beside it: the hit matched the very question the rewrite came from
(``own``), and the fresh answer's first citation is the cached one's (``first_agree``).
The bar: agreement in >= 99% of hits.

The rules are the cache benchmark's own rewrites of a question, meaning kept:
- ``case``: lower case, the question mark dropped;
- ``contraction``: "What is" -> "What's", "do not" -> "don't", "is not" -> "isn't" (and back);
- ``polite``: "Can you tell me " + the question with its first letter lowered;
- ``prefix``: "Question: " + the question;
- ``whitespace``: doubled inner spaces and a trailing space (an exact hit, normalised).
A rewrite equal to its question is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import write_result

SHARED = Path(os.environ.get("RAGLINE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

_CONTRACTIONS = [
    (r"\bWhat is\b", "What's"),
    (r"\bwhat is\b", "what's"),
    (r"\bWho is\b", "Who's"),
    (r"\bdo not\b", "don't"),
    (r"\bis not\b", "isn't"),
    (r"\bdoes not\b", "doesn't"),
    (r"\bWhat's\b", "What is"),
    (r"\bdidn't\b", "did not"),
]


def _contract(q: str) -> str:
    for pattern, repl in _CONTRACTIONS:
        new = re.sub(pattern, repl, q)
        if new != q:
            return new
    return q


RULES: dict[str, Callable[[str], str]] = {
    "case": lambda q: q.lower().rstrip(" ?"),
    "contraction": _contract,
    "polite": lambda q: "Can you tell me " + q[:1].lower() + q[1:],
    "prefix": lambda q: "Question: " + q,
    "whitespace": lambda q: q.replace(" ", "  ") + " ",
}


def cited(answer: Any) -> list[str]:
    return sorted({c.doc_id for c in answer.citations}) if answer.found else []


def run_dataset(name: str, limit: int, sources_check: bool = True) -> dict[str, Any]:
    from ragline.cache.keys import request_key
    from ragline.cache.memory import MemoryCacheStore
    from ragline.cache.service import ResponseCache
    from ragline.config import CacheSettings, load_settings
    from ragline.eval.answers import AnswerEvaluator, load_qa
    from ragline.server.caching import sources_of

    ds = load_qa(SHARED / name, "test")
    settings = load_settings(None)
    with AnswerEvaluator(ds, settings) as ev:
        info = ev.prepare_index()
        engine = ev.engine
        collection = info.collection
        questions = [ds.beir.queries[qid] for qid in ds.questions(limit)]

        async def embed(q: str) -> Any:
            return await asyncio.to_thread(lambda: engine.embedder.embed_queries([q])[0])

        async def versions(c: str, ids: Any) -> dict[str, str]:
            return await asyncio.to_thread(engine.versions, c, ids)

        def answer(q: str) -> Any:
            return engine.answer(q, collection=collection, mode="extractive")

        def body_of(a: Any) -> dict[str, Any]:
            return {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "rag/" + name,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": a.text}, "finish_reason": "stop"}
                ],
                "cited": cited(a),
                "first": a.citations[0].doc_id if a.found and a.citations else None,
            }

        async def main() -> dict[str, Any]:
            store = MemoryCacheStore(max_entries=100_000, dim=lambda: engine.embedder.dim)
            cache = ResponseCache(CacheSettings(), store, embed=embed, versions=versions)
            top_k = settings.answer.top_k

            async def retrieve(q: str, vector: Any) -> list[str]:
                # the answer's own retrieval (Engine.answer: answer.top_k, the question's vector)
                hits = await asyncio.to_thread(
                    engine.search, q, collection=collection, top_k=top_k, query_vector=vector
                )
                return [h.chunk_id for h in hits]

            def plan(q: str) -> Any:
                body = {"model": "rag/" + name, "messages": [{"role": "user", "content": q}]}
                return cache.plan(
                    request_key("t", collection, body),
                    tenant="t",
                    model="rag/" + name,
                    collection=collection,
                    control=None,
                    retrieve=retrieve if sources_check else None,
                )

            t0 = time.perf_counter()
            for q in questions:
                a = await asyncio.to_thread(answer, q)
                await cache.store(
                    plan(q), body_of(a), sources=sources_of(a), retrieved=[h.chunk_id for h in a.sources]
                )
            store_s = time.perf_counter() - t0
            rows: dict[str, dict[str, Any]] = {}
            wrong: list[dict[str, Any]] = []
            for rule, rewrite in RULES.items():
                row = {"rewrites": 0, "hits": 0, "semantic_hits": 0, "agree": 0, "own": 0, "first_agree": 0}
                for q in questions:
                    p = rewrite(q)
                    if p == q:
                        continue
                    row["rewrites"] += 1
                    found = await cache.lookup(plan(p))
                    if found.entry is None:
                        continue
                    row["hits"] += 1
                    row["semantic_hits"] += found.status == "semantic-hit"
                    row["own"] += found.entry.question == q.strip()
                    fresh_answer = await asyncio.to_thread(answer, p)
                    fresh = cited(fresh_answer)
                    first = (
                        fresh_answer.citations[0].doc_id
                        if fresh_answer.found and fresh_answer.citations
                        else None
                    )
                    row["first_agree"] += first == found.entry.body["first"]
                    if fresh == found.entry.body["cited"]:
                        row["agree"] += 1
                    elif len(wrong) < 20:
                        wrong.append(
                            {
                                "rule": rule,
                                "asked": p,
                                "matched": found.entry.question,
                                "similarity": found.similarity,
                                "cached_cited": found.entry.body["cited"],
                                "fresh_cited": fresh,
                            }
                        )
                row["agreement"] = row["agree"] / row["hits"] if row["hits"] else None
                rows[rule] = row
            await cache.close()
            hits = sum(r["hits"] for r in rows.values())
            agree = sum(r["agree"] for r in rows.values())
            own = sum(r["own"] for r in rows.values())
            first_agree = sum(r["first_agree"] for r in rows.values())
            return {
                "own_question": own / hits if hits else None,
                "first_citation_agreement": first_agree / hits if hits else None,
                "questions": len(questions),
                "store_s": store_s,
                "rules": rows,
                "hits": hits,
                "agree": agree,
                "agreement": agree / hits if hits else None,
                "disagreements_sample": wrong,
            }

        return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--dataset", action="append", default=None)
    ap.add_argument(
        "--sources-check",
        choices=["on", "off", "both"],
        default="both",
        help="cache.semantic.rag_sources: the shipped check (on), without it (off), or both side by side",
    )
    args = ap.parse_args()
    names = args.dataset or ["xquad-en", "covidqa"]
    variants = {"on": [True], "off": [False], "both": [True, False]}[args.sources_check]
    data: dict[str, Any] = {}
    for check in variants:
        part: dict[str, Any] = {"datasets": {}}
        for n in names:
            part["datasets"][n] = run_dataset(n, args.limit, check)
            shown = {k: v for k, v in part["datasets"][n].items() if k != "disagreements_sample"}
            print(n, "sources check" if check else "no sources check", json.dumps(shown, indent=2))
        hits = sum(d["hits"] for d in part["datasets"].values())
        agree = sum(d["agree"] for d in part["datasets"].values())
        part["agreement"] = agree / hits if hits else None
        part["bar_99_percent"] = part["agreement"] is not None and part["agreement"] >= 0.99
        data["sources_check" if check else "no_sources_check"] = part
    cmd = (
        f"python -m bench.cache_rag_correctness --limit {args.limit} --sources-check {args.sources_check} "
        + " ".join(f"--dataset {n}" for n in names)
    )
    print(write_result("cache_rag_correctness", cmd, data))


if __name__ == "__main__":
    main()
