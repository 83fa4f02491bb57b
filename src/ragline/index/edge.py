"""The embedded Qdrant engine (qdrant-edge-py): one shard per collection.

Named dense vector ``dense`` (cosine, HNSW) and sparse vector ``bm25`` (the
engine's BM25 with the IDF modifier, so IDF is computed over the live shard).
Only this module imports qdrant_edge.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import qdrant_edge as qe

from ragline.errors import InvalidFilter
from ragline.index.base import IndexHit, IndexPoint, StoredPoint
from ragline.index.bm25 import Bm25Encoder
from ragline.index.filters import Condition, Filter, normalize_datetime

DENSE = "dense"
SPARSE = "bm25"
# qdrant-edge 0.9 matches a boolean filter value as the integer 1/0, which never equals a JSON
# boolean. Boolean fields are therefore mirrored as 0/1 under this key for filtering; the mirror
# never leaves this module (it is stripped from every payload we return).
_BOOL = "_bool"


def _with_bool_mirror(payload: dict[str, Any]) -> dict[str, Any]:
    bools = {k: int(v) for k, v in payload.items() if isinstance(v, bool)}
    return {**payload, _BOOL: bools} if bools else payload


class EdgeIndex:
    def __init__(
        self,
        path: Path,
        dim: int,
        *,
        bm25_k: float = 1.2,
        bm25_b: float = 0.75,
        bm25_avg_len: float = 120.0,
        hnsw_ef: int = 128,
        threads: int | None = None,
    ) -> None:
        self._path = path
        self._dim = dim
        self._hnsw_ef = hnsw_ef
        self._bm25 = Bm25Encoder(k=bm25_k, b=bm25_b, avg_len=bm25_avg_len).engine
        vectors = {DENSE: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)}
        sparse = {SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
        segments = path / "segments"
        created = not (segments.exists() and any(segments.iterdir()))
        if not created:
            # the search pool's size is not stored with every shard: pass it on each load (the
            # engine's default is 8 threads per shard, whatever the number of cores)
            config = None
            if threads is not None:
                config = qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse, max_search_threads=threads)
            self._shard = qe.EdgeShard.load(str(path), config)
        else:
            path.mkdir(parents=True, exist_ok=True)
            config = qe.EdgeConfig(
                vectors=vectors,
                sparse_vectors=sparse,
                hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=128, full_scan_threshold=10_000),
                max_search_threads=threads,
            )
            self._shard = qe.EdgeShard.create(str(path), config)
        try:
            if created:
                for key, schema in (
                    ("doc_id", qe.PayloadSchemaType.Keyword),
                    ("source", qe.PayloadSchemaType.Keyword),
                    ("page", qe.PayloadSchemaType.Integer),
                    ("chunk_index", qe.PayloadSchemaType.Integer),
                    ("ingested_at", qe.PayloadSchemaType.Datetime),
                ):
                    self._shard.update(qe.UpdateOperation.create_field_index(key, schema))
            self._indexed = set(self._shard.info().payload_schema.keys())
        except BaseException:
            self._shard.close()  # a failed open keeps nothing open
            raise
        self._lock = threading.RLock()

    # -- writes ------------------------------------------------------------------------

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        qpoints = [
            qe.Point(
                id=p.id,
                vector={
                    DENSE: p.dense.astype(np.float32).tolist(),
                    SPARSE: self._bm25.embed_document(p.lexical_text),
                },
                payload=_with_bool_mirror(p.payload),
            )
            for p in points
        ]
        with self._lock:
            self._shard.update(qe.UpdateOperation.upsert_points(qpoints))

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._lock:
            self._shard.update(qe.UpdateOperation.delete_points(list(ids)))

    def ensure_payload_index(self, key: str, sample: object) -> None:
        if key in self._indexed:
            return
        schema: Any
        if isinstance(sample, bool):
            key, schema = f"{_BOOL}.{key}", qe.PayloadSchemaType.Integer
            if key in self._indexed:
                return
        elif isinstance(sample, int):
            schema = qe.PayloadSchemaType.Integer
        elif isinstance(sample, float):
            schema = qe.PayloadSchemaType.Float
        elif isinstance(sample, str):
            try:
                datetime.fromisoformat(sample.replace("Z", "+00:00"))
                schema = qe.PayloadSchemaType.Datetime if len(sample) >= 10 and sample[4] == "-" else None
            except ValueError:
                schema = None
            schema = schema or qe.PayloadSchemaType.Keyword
        else:
            return
        with self._lock:
            self._shard.update(qe.UpdateOperation.create_field_index(key, schema))
            self._indexed.add(key)

    def flush(self) -> None:
        with self._lock:
            self._shard.flush()

    def optimize(self) -> None:
        with self._lock:
            self._shard.optimize()
            self._shard.flush()

    def close(self) -> None:
        with self._lock:
            try:
                self._shard.flush()
            finally:  # a failed flush (no descriptor left) must not keep the shard open
                self._shard.close()

    # -- reads -------------------------------------------------------------------------

    def count(self) -> int:
        return int(self._shard.count(qe.CountRequest(exact=True)))

    def existing(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        records = self._shard.retrieve(list(ids), with_payload=False, with_vector=False)
        return {str(r.id) for r in records}

    def points(
        self, ids: Sequence[str], *, fields: Sequence[str] | None = None, dense: bool = False
    ) -> dict[str, StoredPoint]:
        if not ids:
            return {}
        records = self._shard.retrieve(
            list(ids), with_payload=_selector(fields), with_vector=[DENSE] if dense else False
        )
        out = {}
        for r in records:
            vec = r.vector if dense else None
            arr = np.asarray(vec[DENSE], dtype=np.float32) if isinstance(vec, dict) and DENSE in vec else None
            out[str(r.id)] = StoredPoint(_public(r.payload), arr)
        return out

    def rescore(self, dense: npt.NDArray[np.float32], ids: Sequence[str], limit: int) -> list[IndexHit]:
        if not ids or limit < 1:
            return []
        # an exact search restricted to the ids: the engine scores them natively (reading the
        # vectors out to numpy instead cost 5x as much at 200 ids)
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(dense.astype(np.float32).tolist(), using=DENSE),
            filter=qe.Filter(must=[qe.HasIdCondition(set(ids))]),
            with_payload=False,
            params=qe.SearchParams(exact=True),
        )
        (result,) = self._shard.query_batch(qe.QueryBatchRequest([request]))
        return [IndexHit(str(p.id), float(p.score), {}) for p in result]

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
        qfilter = to_qdrant_filter(flt) if flt else None
        with_payload = _selector(fields)
        requests = []
        if dense is not None:
            requests.append(
                qe.QueryRequest(
                    limit=limit,
                    query=qe.Query.Nearest(dense.astype(np.float32).tolist(), using=DENSE),
                    filter=qfilter,
                    with_payload=with_payload,
                    params=qe.SearchParams(hnsw_ef=max(self._hnsw_ef, limit), exact=exact),
                )
            )
        sparse_vec = self._bm25.embed_query(text) if text else None
        if sparse_vec is not None and sparse_vec.indices:
            requests.append(
                qe.QueryRequest(
                    limit=limit,
                    query=qe.Query.Nearest(sparse_vec, using=SPARSE),
                    filter=qfilter,
                    with_payload=with_payload,
                )
            )
        if not requests:
            return [], []
        results = self._shard.query_batch(qe.QueryBatchRequest(requests))
        converted = [[IndexHit(str(p.id), float(p.score), _public(p.payload)) for p in r] for r in results]
        dense_hits = converted.pop(0) if dense is not None else []
        sparse_hits = converted.pop(0) if converted else []
        return dense_hits, sparse_hits


def _selector(fields: Sequence[str] | None) -> bool | list[str]:
    if fields is None:
        return True
    return list(fields) or False


def _public(payload: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(payload or {})
    out.pop(_BOOL, None)
    return out


def _equals(key: str, value: object) -> Any:
    if isinstance(value, bool):
        return qe.FieldCondition(key=f"{_BOOL}.{key}", match=qe.MatchValue(int(value)))
    if isinstance(value, float):  # the engine matches floats by range, not by value
        return qe.FieldCondition(key=key, range=qe.RangeFloat(gte=value, lte=value))
    if isinstance(value, str | int):
        return qe.FieldCondition(key=key, match=qe.MatchValue(value))
    raise InvalidFilter(f"cannot match {key} against {value!r}")


def _condition(c: Condition) -> Any:
    if c.op == "eq":
        return _equals(c.key, c.value)
    if c.op == "in":
        assert isinstance(c.value, tuple)
        values = list(c.value)
        strs = [v for v in values if isinstance(v, str)]
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if len(strs) == len(values):
            return qe.FieldCondition(key=c.key, match=qe.MatchAny(strs))
        if len(ints) == len(values):
            return qe.FieldCondition(key=c.key, match=qe.MatchAny(ints))
        return qe.Filter(should=[_equals(c.key, v) for v in values])
    bound = {c.op: c.value}
    if c.is_datetime:
        assert isinstance(c.value, str)
        return qe.FieldCondition(key=c.key, range=qe.RangeDateTime(**{c.op: normalize_datetime(c.value)}))
    return qe.FieldCondition(key=c.key, range=qe.RangeFloat(**{k: float(v) for k, v in bound.items()}))  # type: ignore[arg-type]


def to_qdrant_filter(flt: Filter) -> Any:
    return qe.Filter(
        must=[_condition(c) for c in flt.must] or None,
        must_not=[_condition(c) for c in flt.must_not] or None,
    )
