"""Rank fusion of several candidate lists.

- ``rrf``: Reciprocal Rank Fusion, score = sum_i w_i / (k + rank_i) (Cormack et al., 2009).
- ``convex``: alpha * dense + (1 - alpha) * bm25 on normalised scores; a candidate missing from
  one list gets 0 from it. Normalisation per list: ``minmax`` maps [min, max] to [0, 1];
  ``dbsf`` (distribution-based score fusion, as in Qdrant's DBSF) maps [mean - 3 sd, mean + 3 sd]
  to [0, 1], so one outlying top score does not squash the rest of its list.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from ragline.index.base import IndexHit


class FusionMethod(StrEnum):
    RRF = "rrf"
    CONVEX = "convex"

    @classmethod
    def parse(cls, value: str) -> FusionMethod:
        try:
            return cls(value.lower())
        except ValueError:
            raise ValueError(f"unknown fusion {value!r}; choose one of {[m.value for m in cls]}") from None


def rrf(
    lists: Sequence[Sequence[IndexHit]], k: int = 60, weights: Sequence[float] | None = None
) -> dict[str, float]:
    weights = weights or [1.0] * len(lists)
    scores: dict[str, float] = {}
    for hits, w in zip(lists, weights, strict=True):
        for rank, hit in enumerate(hits, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + w / (k + rank)
    return scores


def _minmax(hits: Sequence[IndexHit]) -> dict[str, float]:
    if not hits:
        return {}
    lo = min(h.score for h in hits)
    hi = max(h.score for h in hits)
    span = hi - lo
    return {h.id: (h.score - lo) / span if span > 0 else 1.0 for h in hits}


def _dbsf(hits: Sequence[IndexHit]) -> dict[str, float]:
    if not hits:
        return {}
    n = len(hits)
    mean = sum(h.score for h in hits) / n
    sd = (sum((h.score - mean) ** 2 for h in hits) / n) ** 0.5
    if sd == 0:
        return {h.id: 1.0 for h in hits}
    lo = mean - 3 * sd
    return {h.id: (h.score - lo) / (6 * sd) for h in hits}


NORMALIZATIONS = {"minmax": _minmax, "dbsf": _dbsf}


def convex(
    dense: Sequence[IndexHit],
    sparse: Sequence[IndexHit],
    alpha: float = 0.5,
    normalization: str = "minmax",
) -> dict[str, float]:
    norm = NORMALIZATIONS[normalization]
    d = norm(dense)
    s = norm(sparse)
    return {i: alpha * d.get(i, 0.0) + (1 - alpha) * s.get(i, 0.0) for i in d.keys() | s.keys()}
