"""Ranking metrics, computed as trec_eval (and so BEIR, via pytrec_eval) computes them.

- ``ndcg@k``: DCG = sum over the top k of rel_i / log2(i + 1) (linear graded gain, i from 1),
  divided by the DCG of the ideal ranking of every judged document with rel > 0.
- ``recall@k``: relevant documents (rel > 0) in the top k / all relevant documents.
- ``mrr@k``: 1 / rank of the first relevant document within the top k, else 0.

A run maps query id -> {doc id: score}. Documents are ranked by score, ties broken by doc id
in descending order (trec_eval's rule). Every query of the qrels is evaluated; one the run
lacks scores 0. Queries of the run that the qrels lack are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Run = Mapping[str, Mapping[str, float]]
QrelsLike = Mapping[str, Mapping[str, int]]

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
_NAMES = ("ndcg", "recall", "mrr")


def rank(scores: Mapping[str, float]) -> list[str]:
    """Doc ids by descending score; ties by descending doc id, as trec_eval orders them."""
    by_id = sorted(scores, reverse=True)
    return sorted(by_id, key=lambda d: -scores[d])


def _discounts(k: int) -> npt.NDArray[np.float64]:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    ideal = np.sort(np.array([r for r in rels.values() if r > 0], dtype=np.float64))[::-1][:k]
    if ideal.size == 0:
        return 0.0
    gains = np.array([max(rels.get(d, 0), 0) for d in ranked[:k]], dtype=np.float64)
    dcg = float(gains @ _discounts(gains.size)) if gains.size else 0.0
    idcg = float(ideal @ _discounts(ideal.size))
    return dcg / idcg


def recall_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    if not relevant:
        return 0.0
    return sum(1 for d in ranked[:k] if d in relevant) / len(relevant)


def mrr_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k], start=1):
        if rels.get(d, 0) > 0:
            return 1.0 / i
    return 0.0


_FUNCS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k}


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ("ndcg", 10)."""
    base, sep, cut = name.lower().partition("@")
    if base not in _NAMES or not sep or not cut.isdigit() or int(cut) < 1:
        raise ValueError(f"unknown metric {name!r}; use one of {list(_NAMES)} with a cutoff, e.g. ndcg@10")
    return base, int(cut)


@dataclass(slots=True)
class Evaluation:
    """Per-query values (in the qrels' query order) and their means, per metric."""

    query_ids: list[str]
    per_query: dict[str, npt.NDArray[np.float64]]

    @property
    def means(self) -> dict[str, float]:
        return {m: float(v.mean()) if v.size else 0.0 for m, v in self.per_query.items()}

    def query_values(self, query_id: str) -> dict[str, float]:
        i = self.query_ids.index(query_id)
        return {m: float(v[i]) for m, v in self.per_query.items()}


def evaluate(run: Run, qrels: QrelsLike, metrics: Iterable[str] = DEFAULT_METRICS) -> Evaluation:
    parsed = [(m, *parse_metric(m)) for m in metrics]
    qids = list(qrels)
    values = {m: np.zeros(len(qids), dtype=np.float64) for m, _, _ in parsed}
    for i, qid in enumerate(qids):
        scores = run.get(qid)
        if not scores:
            continue
        ranked = rank(scores)
        rels = qrels[qid]
        for m, base, k in parsed:
            values[m][i] = _FUNCS[base](ranked, rels, k)
    return Evaluation(qids, values)
