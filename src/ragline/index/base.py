"""The index seam: dense vectors, BM25 and payloads for one collection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ragline.index.filters import Filter


@dataclass(slots=True)
class IndexPoint:
    id: str
    dense: npt.NDArray[np.float32]
    #: Text the lexical (BM25) representation is built from.
    lexical_text: str
    payload: dict[str, Any]


@dataclass(slots=True)
class IndexHit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(slots=True)
class StoredPoint:
    payload: dict[str, Any]
    dense: npt.NDArray[np.float32] | None = None


class VectorIndex(Protocol):
    """One collection's index. Implementations: the embedded Qdrant engine (EdgeIndex, index/edge.py) and
    Qdrant through qdrant-client (QdrantIndex, index/qdrant.py); tests/test_index_contract.py runs on both."""

    def upsert(self, points: Sequence[IndexPoint]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def existing(self, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` that are stored."""
        ...

    def search(
        self,
        *,
        dense: npt.NDArray[np.float32] | None,
        text: str | None,
        limit: int,
        flt: Filter | None = None,
        exact: bool = False,
        fields: Sequence[str] | None = None,
    ) -> tuple[list[IndexHit], list[IndexHit]]:
        """Dense and BM25 candidates (either list empty when its query is None), run together.

        ``fields``: the payload keys each hit carries (None = the whole payload; () = none).
        Reading payloads is most of a search's cost, so candidate searches ask for none and
        :meth:`points` reads them for the few hits that are kept.
        """
        ...

    def points(
        self, ids: Sequence[str], *, fields: Sequence[str] | None = None, dense: bool = False
    ) -> dict[str, StoredPoint]:
        """id -> payload (only ``fields`` when given; () = none) and, with ``dense``, the stored
        vector, for the stored ids among ``ids``; one read for both."""
        ...

    def rescore(self, dense: npt.NDArray[np.float32], ids: Sequence[str], limit: int) -> list[IndexHit]:
        """The stored points among ``ids`` scored against ``dense`` (exactly), best first, at most
        ``limit``, without payloads."""
        ...

    def ensure_payload_index(self, key: str, sample: object) -> None:
        """Index a payload field for filtering, typed from a sample value."""
        ...

    def count(self) -> int: ...

    def flush(self) -> None: ...

    def optimize(self) -> None:
        """Build what bulk loads defer (HNSW graphs, segment merges)."""
        ...

    def close(self) -> None: ...
