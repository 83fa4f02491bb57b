"""The BM25 encoding every index backend shares: qdrant_edge's Bm25 (Snowball English stemmer).

A document becomes a sparse vector of term ids and BM25 term-frequency weights (k, b and the
expected length are applied here); a query becomes its term ids, each weighted 1. The index
multiplies in IDF at search time (Qdrant's IDF modifier, computed over the live collection), so
backends that share this encoding rank alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import qdrant_edge as qe


@dataclass(frozen=True, slots=True)
class SparseTerms:
    indices: list[int]
    values: list[float]


class Bm25Encoder:
    def __init__(self, *, k: float = 1.2, b: float = 0.75, avg_len: float = 120.0) -> None:
        self.engine = qe.Bm25(qe.Bm25Config(k=k, b=b, avg_len=avg_len, language="english"))
        """The engine's encoder itself (the edge backend passes its vectors on as they are)."""

    def document(self, text: str) -> SparseTerms:
        vec = self.engine.embed_document(text)
        return SparseTerms(list(vec.indices), list(vec.values))

    def query(self, text: str) -> SparseTerms:
        vec = self.engine.embed_query(text)
        return SparseTerms(list(vec.indices), list(vec.values))
