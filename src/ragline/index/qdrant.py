"""Qdrant through the official qdrant-client: a server or cluster by URL, or the client's local mode.

One ragline collection is one Qdrant collection (``index.collection_prefix`` + its stored name)
with the same two named vectors as the embedded engine: ``dense`` (cosine, HNSW m=16,
ef_construct=128) and ``bm25`` (sparse, the server's IDF modifier), the sparse vectors encoded by
the shared :class:`~ragline.index.bm25.Bm25Encoder`. Dense and BM25 candidates are one batch
request; filters run inside the search.

Local mode (``QdrantClient(path=...)`` or ``":memory:"``) serves the same client API in this
process: exact (brute-force numpy) dense search, BM25 scored point by point in Python, no payload
indexes (they are accepted and ignored). The code below is the same for both; only the client's
constructor differs (:func:`connect`). Only this module imports qdrant_client, lazily (the
``qdrant`` extra).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ragline.errors import CollectionBusy, ConfigError, InvalidFilter
from ragline.index.base import IndexHit, IndexPoint, StoredPoint
from ragline.index.bm25 import Bm25Encoder, SparseTerms
from ragline.index.filters import Condition, Filter, normalize_datetime
from ragline.optional import require

if TYPE_CHECKING:
    from qdrant_client import QdrantClient
    from qdrant_client.http import models as qm

DENSE = "dense"
SPARSE = "bm25"
FEATURE = "index.kind=qdrant"
MEMORY = ":memory:"
#: The payload indexes every collection gets when it is created (the edge backend's too).
BASE_INDEXES = (
    ("doc_id", "keyword"),
    ("source", "keyword"),
    ("page", "integer"),
    ("chunk_index", "integer"),
    ("ingested_at", "datetime"),
)
#: What local mode warns about once per process: it is what local mode is (said in the docs).
_LOCAL_MODE_WARNINGS = ("Payload indexes have no effect in the local Qdrant", "Local mode performs exact")


def require_client() -> Any:
    """The qdrant_client package, or MissingDependency naming the ``qdrant`` extra."""
    return require("qdrant_client", extra="qdrant", feature=FEATURE)


def _models() -> Any:
    require_client()
    return require("qdrant_client.http.models", extra="qdrant", feature=FEATURE)


# -- connections -----------------------------------------------------------------------------


class Connection:
    """One client, shared by every collection of a process that uses the same server or folder.

    Local mode locks its folder for one client, and its storage is not safe across threads:
    its calls are serialised here. A server's client is thread-safe and takes no lock.
    """

    def __init__(self, client: QdrantClient, key: tuple[str, str], *, local: bool) -> None:
        self.client = client
        self.key = key
        self.local = local
        self.users = 0
        self._lock = threading.RLock() if local else None

    def guard(self) -> AbstractContextManager[Any]:
        return self._lock if self._lock is not None else nullcontext()


_connections: dict[tuple[str, str], Connection] = {}
_connections_lock = threading.Lock()


def location(url: str | None, path: str | None, data_dir: Path) -> tuple[str, str]:
    """("url", URL) for a server, else ("path", folder or ":memory:") for local mode."""
    if url:
        return ("url", url)
    if path == MEMORY:
        return ("path", MEMORY)
    return ("path", str(Path(path).resolve() if path else (data_dir / "qdrant").resolve()))


def connect(
    url: str | None,
    path: str | None,
    data_dir: Path,
    *,
    api_key: str | None = None,
    timeout_s: float = 30.0,
) -> Connection:
    """The process's connection to this server or local folder (opened on first use).

    Each call is one more user: pair it with :func:`release`.
    """
    key = location(url, path, data_dir)
    with _connections_lock:
        conn = _connections.get(key)
        if conn is None:
            qdrant_client = require_client()
            if key[0] == "path":
                for message in _LOCAL_MODE_WARNINGS:
                    warnings.filterwarnings("ignore", message=message, category=UserWarning)
            if key[0] == "url":
                timeout = max(1, round(timeout_s))  # the client takes whole seconds
                client = qdrant_client.QdrantClient(url=key[1], api_key=api_key, timeout=timeout)
            elif key[1] == MEMORY:
                client = qdrant_client.QdrantClient(location=MEMORY, force_disable_check_same_thread=True)
            else:
                Path(key[1]).mkdir(parents=True, exist_ok=True)
                try:
                    client = qdrant_client.QdrantClient(path=key[1], force_disable_check_same_thread=True)
                except RuntimeError as e:  # the folder's lock is held by another process
                    raise CollectionBusy(
                        f"the Qdrant local-mode folder {key[1]} is in use by another ragline process "
                        "(local mode serves one process; use a Qdrant server, index.url, for several)"
                    ) from e
            conn = Connection(client, key, local=key[0] == "path")
            _connections[key] = conn
        conn.users += 1
        return conn


def release(conn: Connection) -> None:
    """One user fewer; the last one closes the client (an in-memory one is kept: closing it would
    lose its data)."""
    with _connections_lock:
        conn.users -= 1
        if conn.users > 0 or conn.key[1] == MEMORY:
            return
        _connections.pop(conn.key, None)
    with conn.guard():
        conn.client.close()


def drop_collection(conn: Connection, name: str) -> bool:
    """Delete the Qdrant collection ``name``; False if there was none."""
    with conn.guard():
        if not conn.client.collection_exists(name):
            return False
        return bool(conn.client.delete_collection(name))


# -- the index -------------------------------------------------------------------------------


class QdrantIndex:
    """One ragline collection as one Qdrant collection (created with its payload indexes if new)."""

    def __init__(
        self,
        conn: Connection,
        name: str,
        dim: int,
        *,
        bm25_k: float = 1.2,
        bm25_b: float = 0.75,
        bm25_avg_len: float = 120.0,
        hnsw_ef: int = 128,
        owns_connection: bool = True,
    ) -> None:
        """``owns_connection``: :meth:`close` (or a failed open) releases ``conn``."""
        # whatever fails below, the connection's use is given back: a failed open keeps nothing
        self._conn = conn
        self._owns = owns_connection
        self._closed = False
        self._client = conn.client
        self.name = name
        self._dim = dim
        self._hnsw_ef = hnsw_ef
        self._indexed: set[str] = set()
        try:
            self._m = _models()
            self._bm25 = Bm25Encoder(k=bm25_k, b=bm25_b, avg_len=bm25_avg_len)
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        m = self._m
        with self._conn.guard():
            if not self._client.collection_exists(self.name):
                try:
                    self._client.create_collection(
                        self.name,
                        vectors_config={
                            DENSE: m.VectorParams(
                                size=self._dim,
                                distance=m.Distance.COSINE,
                                hnsw_config=m.HnswConfigDiff(
                                    m=16, ef_construct=128, full_scan_threshold=10_000
                                ),
                            )
                        },
                        sparse_vectors_config={SPARSE: m.SparseVectorParams(modifier=m.Modifier.IDF)},
                    )
                except Exception:
                    if not self._client.collection_exists(self.name):  # not another replica's creation
                        raise
                for key, kind in BASE_INDEXES:
                    self._create_payload_index(key, kind)
            info = self._client.get_collection(self.name)
        vectors = info.config.params.vectors
        params = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if params is None or params.size != self._dim:
            have = getattr(params, "size", None)
            raise ConfigError(
                f"the Qdrant collection {self.name!r} holds dense vectors of dim {have}, not {self._dim} "
                f"(a vector named {DENSE!r}): it was not made by ragline with this embedder"
            )
        self._indexed.update(info.payload_schema or {})
        self._indexed.update(key for key, _ in BASE_INDEXES)

    def _create_payload_index(self, key: str, kind: str) -> None:
        schema = self._m.PayloadSchemaType(kind)
        self._client.create_payload_index(self.name, key, field_schema=schema, wait=True)
        self._indexed.add(key)

    # -- writes ------------------------------------------------------------------------

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        m = self._m
        qpoints = [
            m.PointStruct(
                id=p.id,
                vector={
                    DENSE: p.dense.astype(np.float32).tolist(),
                    SPARSE: self._sparse(self._bm25.document(p.lexical_text)),
                },
                payload=p.payload,
            )
            for p in points
        ]
        with self._conn.guard():
            self._client.upsert(self.name, points=qpoints, wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._conn.guard():
            self._client.delete(self.name, points_selector=self._m.PointIdsList(points=list(ids)), wait=True)

    def ensure_payload_index(self, key: str, sample: object) -> None:
        if key in self._indexed:
            return
        kind = payload_kind(sample)
        if kind is None:
            return
        with self._conn.guard():
            self._create_payload_index(key, kind)

    def flush(self) -> None:
        """Nothing to do: every write waits until Qdrant has applied it (``wait=True``)."""

    def optimize(self) -> None:
        """Wait until the server has built what bulk loads defer (the collection is green again)."""
        m = self._m
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with self._conn.guard():
                status = self._client.get_collection(self.name).status
            if status != m.CollectionStatus.YELLOW:
                return
            time.sleep(0.5)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns:
            release(self._conn)

    # -- reads -------------------------------------------------------------------------

    def count(self) -> int:
        with self._conn.guard():
            return int(self._client.count(self.name, exact=True).count)

    def existing(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        with self._conn.guard():
            records = self._client.retrieve(self.name, list(ids), with_payload=False, with_vectors=False)
        return {str(r.id) for r in records}

    def points(
        self, ids: Sequence[str], *, fields: Sequence[str] | None = None, dense: bool = False
    ) -> dict[str, StoredPoint]:
        if not ids:
            return {}
        with self._conn.guard():
            records = self._client.retrieve(
                self.name, list(ids), with_payload=_selector(fields), with_vectors=[DENSE] if dense else False
            )
        out = {}
        for r in records:
            vec = r.vector if dense else None
            arr = np.asarray(vec[DENSE], dtype=np.float32) if isinstance(vec, dict) and DENSE in vec else None
            out[str(r.id)] = StoredPoint(dict(r.payload or {}), arr)
        return out

    def rescore(self, dense: npt.NDArray[np.float32], ids: Sequence[str], limit: int) -> list[IndexHit]:
        if not ids or limit < 1:
            return []
        m = self._m
        with self._conn.guard():
            result = self._client.query_points(
                self.name,
                query=dense.astype(np.float32).tolist(),
                using=DENSE,
                query_filter=m.Filter(must=[m.HasIdCondition(has_id=list(ids))]),
                limit=limit,
                with_payload=False,
                search_params=m.SearchParams(exact=True),
            )
        return [IndexHit(str(p.id), float(p.score), {}) for p in result.points]

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
        m = self._m
        qfilter = to_qdrant_filter(flt) if flt else None
        with_payload = _selector(fields)
        requests = []
        if dense is not None:
            requests.append(
                m.QueryRequest(
                    query=dense.astype(np.float32).tolist(),
                    using=DENSE,
                    filter=qfilter,
                    limit=limit,
                    with_payload=with_payload,
                    params=m.SearchParams(hnsw_ef=max(self._hnsw_ef, limit), exact=exact),
                )
            )
        terms = self._bm25.query(text) if text else None
        if terms is not None and terms.indices:
            requests.append(
                m.QueryRequest(
                    query=self._sparse(terms),
                    using=SPARSE,
                    filter=qfilter,
                    limit=limit,
                    with_payload=with_payload,
                )
            )
        if not requests:
            return [], []
        with self._conn.guard():
            responses = self._client.query_batch_points(self.name, requests=requests)
        converted = [
            [IndexHit(str(p.id), float(p.score), dict(p.payload or {})) for p in r.points] for r in responses
        ]
        dense_hits = converted.pop(0) if dense is not None else []
        sparse_hits = converted.pop(0) if converted else []
        return dense_hits, sparse_hits

    def _sparse(self, terms: SparseTerms) -> qm.SparseVector:
        sparse: qm.SparseVector = self._m.SparseVector(indices=terms.indices, values=terms.values)
        return sparse


def payload_kind(sample: object) -> str | None:
    """The Qdrant payload index type for a field, from a sample value (None: not indexable)."""
    if isinstance(sample, bool):
        return "bool"
    if isinstance(sample, int):
        return "integer"
    if isinstance(sample, float):
        return "float"
    if isinstance(sample, str):
        if len(sample) >= 10 and sample[4] == "-":
            try:
                datetime.fromisoformat(sample.replace("Z", "+00:00"))
                return "datetime"
            except ValueError:
                pass
        return "keyword"
    return None


def _selector(fields: Sequence[str] | None) -> bool | list[str]:
    if fields is None:
        return True
    return list(fields) or False


# -- filters ---------------------------------------------------------------------------------


def _equals(m: Any, key: str, value: object) -> Any:
    if isinstance(value, float):  # Qdrant matches floats by range, not by value
        return m.FieldCondition(key=key, range=m.Range(gte=value, lte=value))
    if isinstance(value, str | int):  # bool is an int: matched as a JSON boolean
        return m.FieldCondition(key=key, match=m.MatchValue(value=value))
    raise InvalidFilter(f"cannot match {key} against {value!r}")


def _condition(m: Any, c: Condition) -> Any:
    if c.op == "eq":
        return _equals(m, c.key, c.value)
    if c.op == "in":
        assert isinstance(c.value, tuple)
        values = list(c.value)
        strs = [v for v in values if isinstance(v, str)]
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if len(strs) == len(values):
            return m.FieldCondition(key=c.key, match=m.MatchAny(any=strs))
        if len(ints) == len(values):
            return m.FieldCondition(key=c.key, match=m.MatchAny(any=ints))
        return m.Filter(should=[_equals(m, c.key, v) for v in values])
    if c.is_datetime:
        assert isinstance(c.value, str)
        return m.FieldCondition(key=c.key, range=m.DatetimeRange(**{c.op: normalize_datetime(c.value)}))
    if isinstance(c.value, bool) or not isinstance(c.value, int | float):
        raise InvalidFilter(f"range filter on {c.key} needs a number or an ISO date, not {c.value!r}")
    return m.FieldCondition(key=c.key, range=m.Range(**{c.op: float(c.value)}))


def to_qdrant_filter(flt: Filter) -> Any:
    """ragline's backend-neutral Filter as a qdrant-client Filter."""
    m = _models()
    return m.Filter(
        must=[_condition(m, c) for c in flt.must] or None,
        must_not=[_condition(m, c) for c in flt.must_not] or None,
    )
