"""Open the configured index for a collection: the embedded engine (edge) or Qdrant."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ragline.config import Settings
from ragline.index.base import VectorIndex

if TYPE_CHECKING:
    from ragline.index.qdrant import Connection


def check_installed(settings: Settings) -> None:
    """Raise MissingDependency unless the library of the configured index can be imported."""
    if settings.index.kind == "qdrant":
        from ragline.index.qdrant import require_client

        require_client()


def qdrant_name(settings: Settings, collection: str) -> str:
    """The Qdrant collection a ragline collection (its stored name) lives in."""
    return f"{settings.index.collection_prefix}{collection}"


def open_index(settings: Settings, collection: str, folder: Path, dim: int) -> VectorIndex:
    """The index of ``collection`` (its stored name), whose own folder is ``folder``.

    edge keeps its shard in ``folder/shard``; qdrant keeps nothing in the folder.
    """
    r = settings.retrieval
    if settings.index.kind == "edge":
        from ragline.index.edge import EdgeIndex

        return EdgeIndex(
            folder / "shard",
            dim,
            bm25_k=r.bm25_k,
            bm25_b=r.bm25_b,
            bm25_avg_len=r.bm25_avg_len,
            hnsw_ef=r.hnsw_ef,
            threads=settings.collections.search_threads,
        )
    from ragline.index.qdrant import QdrantIndex

    # the index gives the connection back when it closes, or when its open fails
    return QdrantIndex(
        _connect(settings),
        qdrant_name(settings, collection),
        dim,
        bm25_k=r.bm25_k,
        bm25_b=r.bm25_b,
        bm25_avg_len=r.bm25_avg_len,
        hnsw_ef=r.hnsw_ef,
    )


def _connect(settings: Settings) -> Connection:
    from ragline.index.qdrant import connect

    s = settings.index
    return connect(
        s.url,
        s.path,
        settings.data_dir,
        api_key=s.api_key.get_secret_value() if s.api_key else None,
        timeout_s=s.timeout_s,
    )


def drop_index(settings: Settings, collection: str) -> None:
    """Remove what the index holds outside the collection's folder (edge: nothing; the folder goes)."""
    if settings.index.kind == "edge":
        return
    from ragline.index.qdrant import drop_collection, release

    conn = _connect(settings)
    try:
        drop_collection(conn, qdrant_name(settings, collection))
    finally:
        release(conn)
