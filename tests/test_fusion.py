"""Score fusion: the normalisations of convex fusion, on lists whose figures are worked by hand."""

from __future__ import annotations

import statistics

import pytest

from ragline.index.base import IndexHit
from ragline.retrieval import fusion


def hits(*pairs: tuple[str, float]) -> list[IndexHit]:
    return [IndexHit(i, s, {}) for i, s in pairs]


DENSE = hits(("a", 0.9), ("b", 0.5), ("c", 0.4))
# one outlying top score, as BM25 gives for a rare query word
SPARSE = hits(("b", 30.0), ("c", 6.0), ("d", 5.0), ("e", 4.0))


def test_minmax_maps_each_list_onto_zero_to_one() -> None:
    fused = fusion.convex(DENSE, SPARSE, alpha=0.5)
    assert fused["a"] == pytest.approx(0.5 * 1.0)
    assert fused["b"] == pytest.approx(0.5 * 0.2 + 0.5 * 1.0)
    assert fused["c"] == pytest.approx(0.5 * 0.0 + 0.5 * (2 / 26))
    assert fused["e"] == pytest.approx(0.0)


def test_dbsf_maps_mean_plus_minus_three_sd_onto_zero_to_one() -> None:
    fused = fusion.convex(DENSE, SPARSE, alpha=0.5, normalization="dbsf")
    d = [0.9, 0.5, 0.4]
    s = [30.0, 6.0, 5.0, 4.0]

    def scaled(x: float, xs: list[float]) -> float:
        mu, sd = statistics.fmean(xs), statistics.pstdev(xs)
        return (x - (mu - 3 * sd)) / (6 * sd)

    assert fused["a"] == pytest.approx(0.5 * scaled(0.9, d))
    assert fused["b"] == pytest.approx(0.5 * scaled(0.5, d) + 0.5 * scaled(30.0, s))
    assert fused["e"] == pytest.approx(0.5 * scaled(4.0, s))
    # unlike min-max, the last of a list keeps a share of its score and the outlier does not
    # squash the rest: c (in both lists) now beats a (top of dense only)
    assert fused["c"] > fused["a"]
    minmax = fusion.convex(DENSE, SPARSE, alpha=0.5)
    assert minmax["c"] < minmax["a"]


def test_degenerate_lists() -> None:
    single = hits(("x", 2.0))
    for norm in fusion.NORMALIZATIONS:
        assert fusion.convex(single, [], alpha=0.5, normalization=norm) == {"x": 0.5}
        assert fusion.convex([], [], normalization=norm) == {}
        tied = fusion.convex(hits(("x", 1.0), ("y", 1.0)), [], alpha=1.0, normalization=norm)
        assert tied == {"x": 1.0, "y": 1.0}
