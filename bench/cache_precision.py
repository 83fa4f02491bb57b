"""Semantic cache precision on QQP: how often a semantic hit would serve the wrong answer.

Protocol (issue 13, "Measured correctness"), on ../shared/data/qqp-pairs/dev.jsonl:
- store the first question of every pair in one cache; look up each second question: its nearest
  stored question by cosine of the shipped MiniLM (int8 ONNX, as the product embeds queries), over
  every stored question, not only its own pair's;
- judge a hit by the labels: the two texts in one class (identical after whitespace/case
  normalisation, or joined by duplicate labels, transitively) = correct; two classes that some pair
  labels non-duplicate = wrong; anything else = unknown;
- report precision (unknown excluded, and unknown counted wrong) and the hit rate on duplicate
  queries (second questions of label-1 pairs that get a hit), over the threshold, with and without
  the second check (ragline.cache.match).

The rules of the check were chosen on the "tune" half and are reported on the held-out "test"
half: the pairs are split by connected component of the question graph (as the data set's own
subsampling), so no question text is in both halves. Each half is its own cache.

    .venv/bin/python -m bench.cache_precision                 # test half, writes the JSON
    .venv/bin/python -m bench.cache_precision --split tune    # the half the check was tuned on
    .venv/bin/python -m bench.cache_precision --split all --sample 5000   # the issue's sample

Embeddings of the QQP texts are cached under bench/.cache/qqp-minilm/ (ignored by git): the first
run embeds 69k questions (about 15 minutes on 2 busy cores), later runs take seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench._common import REPO, SHARED_DATA, percentile, write_result
from ragline.cache.match import DEFAULT_RULES, DEFAULT_THRESHOLD, QuestionMatcher

DATA = SHARED_DATA / "qqp-pairs" / "dev.jsonl"
CACHE = REPO / "bench" / ".cache" / "qqp-minilm"
CHUNK = 2000
THRESHOLDS = [round(0.80 + 0.01 * i, 3) for i in range(10)] + [round(0.90 + 0.005 * i, 3) for i in range(20)]
#: The check's rule sets compared at the default threshold (the first is the default).
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_RULES,
    "number only": ("number",),
    "default without order": tuple(r for r in DEFAULT_RULES if r != "order"),
    "default + content": (*DEFAULT_RULES, "content"),
}


def load_pairs(path: Path = DATA) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def distinct_texts(pairs: list[dict[str, Any]]) -> list[str]:
    return sorted({str(p["q1"]) for p in pairs} | {str(p["q2"]) for p in pairs})


def embeddings(texts: list[str]) -> npt.NDArray[np.float32]:
    """Query embeddings of ``texts`` with the shipped MiniLM, cached on disk chunk by chunk."""
    from ragline.config import EmbedderSettings
    from ragline.embed.factory import build_embedder

    key = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
    folder = CACHE / key
    folder.mkdir(parents=True, exist_ok=True)
    embedder = None
    parts = []
    for start in range(0, len(texts), CHUNK):
        f = folder / f"{start:06d}.npy"
        if not f.exists():
            if embedder is None:
                embedder = build_embedder(EmbedderSettings())
            t0 = time.perf_counter()
            vecs = embedder.embed_queries(texts[start : start + CHUNK]).astype(np.float32)
            np.save(f.with_suffix(".tmp.npy"), vecs)
            f.with_suffix(".tmp.npy").rename(f)
            print(
                f"embedded {start + len(vecs)}/{len(texts)} ({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )
        parts.append(np.load(f))
    return np.concatenate(parts)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class Labels:
    """Label classes over normalised texts: duplicates joined transitively; known non-duplicates."""

    def __init__(self, pairs: list[dict[str, Any]]) -> None:
        self._uf = _UnionFind()
        for p in pairs:
            a, b = normalise(p["q1"]), normalise(p["q2"])
            self._uf.find(a)
            self._uf.find(b)
            if p["label"] == 1:
                self._uf.union(a, b)
        self._negative: set[tuple[str, str]] = set()
        for p in pairs:
            if p["label"] == 0:
                ca, cb = self.cls(p["q1"]), self.cls(p["q2"])
                if ca != cb:  # a class that contradicts itself counts as the same class
                    self._negative.add((min(ca, cb), max(ca, cb)))

    def cls(self, text: str) -> str:
        return self._uf.find(normalise(text))

    def outcome(self, query: str, matched: str) -> str:
        ca, cb = self.cls(query), self.cls(matched)
        if ca == cb:
            return "correct"
        if (min(ca, cb), max(ca, cb)) in self._negative:
            return "wrong"
        return "unknown"


def split_of(pairs: list[dict[str, Any]]) -> list[str]:
    """'tune' or 'test' for each pair, whole components of the question graph together."""
    uf = _UnionFind()
    for p in pairs:
        uf.union(p["q1"], p["q2"])
    key: dict[str, str] = {}
    for p in pairs:
        root = uf.find(p["q1"])
        key[root] = min(key.get(root, p["q1"]), p["q1"], p["q2"])
    out = []
    for p in pairs:
        h = int(hashlib.sha256(("cache-precision-split:" + key[uf.find(p["q1"])]).encode()).hexdigest(), 16)
        out.append("tune" if h % 2 == 0 else "test")
    return out


@dataclass(frozen=True, slots=True)
class Lookup:
    query: str
    matched: str
    similarity: float
    duplicate_query: bool
    """The query's own pair is labelled duplicate (the denominator of the hit rate)."""
    outcome: str


def lookups(
    pairs: list[dict[str, Any]], vec: dict[str, npt.NDArray[np.float32]], labels: Labels
) -> list[Lookup]:
    stored = sorted({p["q1"] for p in pairs})
    s = np.stack([vec[t] for t in stored])
    queries = [p["q2"] for p in pairs]
    q = np.stack([vec[t] for t in queries])
    out = []
    for start in range(0, len(queries), 2048):
        sims = q[start : start + 2048] @ s.T
        best = sims.argmax(axis=1)
        for i, j in enumerate(best):
            query = queries[start + i]
            out.append(
                Lookup(
                    query=query,
                    matched=stored[j],
                    similarity=float(sims[i, j]),
                    duplicate_query=pairs[start + i]["label"] == 1,
                    outcome=labels.outcome(query, stored[j]),
                )
            )
    return out


def evaluate(rows: list[Lookup], matcher: QuestionMatcher) -> dict[str, Any]:
    counts = {"correct": 0, "wrong": 0, "unknown": 0}
    dup_total = sum(r.duplicate_query for r in rows)
    dup_hits = dup_correct = 0
    vetoed: dict[str, dict[str, int]] = {}
    for r in rows:
        v = matcher.judge(r.query, r.matched, r.similarity)
        if v.rule is not None:
            vetoed.setdefault(v.rule, {"correct": 0, "wrong": 0, "unknown": 0})[r.outcome] += 1
        if not v.hit:
            continue
        counts[r.outcome] += 1
        if r.duplicate_query:
            dup_hits += 1
            dup_correct += r.outcome == "correct"
    hits = sum(counts.values())
    known = counts["correct"] + counts["wrong"]
    return {
        "threshold": matcher.threshold,
        "check": matcher.check,
        "rules": list(matcher.rules) if matcher.check else [],
        "hits": hits,
        **counts,
        "precision_unknown_excluded": counts["correct"] / known if known else float("nan"),
        "precision_unknown_wrong": counts["correct"] / hits if hits else float("nan"),
        "hit_rate_duplicate_queries": dup_hits / dup_total if dup_total else float("nan"),
        "correct_hit_rate_duplicate_queries": dup_correct / dup_total if dup_total else float("nan"),
        "vetoed_by_rule": vetoed,
    }


def judge_cost(rows: list[Lookup], matcher: QuestionMatcher) -> dict[str, float]:
    """Microseconds per judge over every lookup, first (cold: token sets built) and second pass."""
    out: dict[str, float] = {}
    for name in ("cold", "warm"):
        times = []
        for r in rows:
            t0 = time.perf_counter()
            matcher.veto(r.query, r.matched, r.similarity)
            times.append((time.perf_counter() - t0) * 1e6)
        out[f"{name}_mean_us"] = sum(times) / len(times)
        out[f"{name}_p50_us"] = percentile(times, 0.5)
        out[f"{name}_p99_us"] = percentile(times, 0.99)
    return out


def check_name(r: dict[str, Any]) -> str:
    if not r["check"]:
        return "off"
    name = next((k for k, v in VARIANTS.items() if list(v) == r["rules"]), None)
    return "on" if name == "default" else f"on: {name or '+'.join(r['rules'])}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| threshold | check | hits | correct | wrong | unknown | precision (unknown excl.) "
        "| precision (unknown = wrong) | hit rate, duplicate queries | correct-hit rate, duplicate queries |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['threshold']:.3f} | {check_name(r)} | {r['hits']} | {r['correct']} "
            f"| {r['wrong']} | {r['unknown']} | {r['precision_unknown_excluded']:.3f} "
            f"| {r['precision_unknown_wrong']:.3f} | {r['hit_rate_duplicate_queries']:.3f} "
            f"| {r['correct_hit_rate_duplicate_queries']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=["test", "tune", "all"], default="test")
    ap.add_argument("--sample", type=int, default=0, help="only the first N pairs of the split")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="the default")
    ap.add_argument("--wrong-sample", type=int, default=50, help="wrong hits at the default to dump")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    pairs = load_pairs()
    texts = distinct_texts(pairs)
    vectors = embeddings(texts)
    vec = dict(zip(texts, vectors, strict=True))
    labels = Labels(pairs)
    if args.split != "all":
        pairs = [p for p, s in zip(pairs, split_of(pairs), strict=True) if s == args.split]
    if args.sample:
        pairs = pairs[: args.sample]
    rows = lookups(pairs, vec, labels)

    results = []
    for check in (False, True):
        for t in THRESHOLDS:
            results.append(evaluate(rows, QuestionMatcher(threshold=t, check=check)))
    default = {"off": evaluate(rows, QuestionMatcher(threshold=args.threshold, check=False))}
    for name, rules in VARIANTS.items():
        default[name] = evaluate(rows, QuestionMatcher(threshold=args.threshold, rules=rules))
    matcher = QuestionMatcher(threshold=args.threshold)
    wrong = [r for r in rows if r.outcome == "wrong" and matcher.judge(r.query, r.matched, r.similarity).hit]
    # A stable sample: ordered by a hash of the two texts, so a rule change that removes some
    # wrong hits leaves the rest of the sample (and its review) in place.
    wrong.sort(key=lambda r: hashlib.sha256(f"{r.query}\x1f{r.matched}".encode()).hexdigest())
    cost = judge_cost(rows, QuestionMatcher(threshold=args.threshold))

    print(
        f"split={args.split} pairs={len(pairs)} stored={len({p['q1'] for p in pairs})} "
        f"duplicate queries={sum(r.duplicate_query for r in rows)}"
    )
    print(table(results))
    print("at the default:")
    print(table(list(default.values())))
    print("vetoed by rule at the default:", default["default"]["vetoed_by_rule"])
    print("judge cost:", {k: round(v, 1) for k, v in cost.items()})
    if not args.no_write:
        name = f"cache-precision-{args.split}" + (f"-{args.sample}" if args.sample else "")
        command = "python -m bench.cache_precision " + " ".join(sys.argv[1:])
        path = write_result(
            name,
            command.strip(),
            {
                "data": str(DATA.relative_to(SHARED_DATA.parent.parent)),
                "split": args.split,
                "pairs": len(pairs),
                "stored": len({p["q1"] for p in pairs}),
                "duplicate_queries": sum(r.duplicate_query for r in rows),
                "embedder": "all-MiniLM-L6-v2-int8 (ragline.embed, query embeddings)",
                "default_threshold": args.threshold,
                "at_default": default,
                "sweep": results,
                "judge_cost": cost,
                "wrong_hits_sample": [asdict(r) for r in wrong[: args.wrong_sample]],
            },
        )
        print("wrote", path)


if __name__ == "__main__":
    main()
