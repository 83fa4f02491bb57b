"""The document registry (SQLite): every document, its version and its chunk ids.

It is also the journal that makes ingestion crash-safe. Before any point of a
new document version is written to the index, a ``pending`` row records the
new and the old chunk ids; the row is removed in the same transaction that
makes the new version current. On open, ``Collection.recover`` settles every
pending row: if all new chunks reached the index the change is rolled forward
(old chunks deleted), otherwise it is rolled back (new chunks deleted), so a
search never sees half a document or a mix of two versions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id       TEXT PRIMARY KEY,
    version      TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    source       TEXT NOT NULL,
    title        TEXT NOT NULL,
    chunk_ids    TEXT NOT NULL,
    n_chunks     INTEGER NOT NULL,
    metadata     TEXT NOT NULL,
    ingested_at  TEXT NOT NULL,
    minhash      BLOB
);
CREATE INDEX IF NOT EXISTS documents_hash ON documents(content_hash);
CREATE TABLE IF NOT EXISTS pending (
    doc_id   TEXT PRIMARY KEY,
    record   TEXT,             -- JSON DocRecord of the new version; NULL for a delete
    new_ids  TEXT NOT NULL,
    old_ids  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(slots=True)
class DocRecord:
    doc_id: str
    version: str
    content_hash: str
    source: str
    title: str
    chunk_ids: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    ingested_at: str = ""
    minhash: bytes | None = None

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_ids)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("minhash")
        d.pop("chunk_ids")
        d["n_chunks"] = self.n_chunks
        return d


@dataclass(slots=True)
class PendingChange:
    doc_id: str
    record: DocRecord | None
    new_ids: list[str]
    old_ids: list[str]


def _row_to_record(row: sqlite3.Row) -> DocRecord:
    return DocRecord(
        doc_id=row["doc_id"],
        version=row["version"],
        content_hash=row["content_hash"],
        source=row["source"],
        title=row["title"],
        chunk_ids=json.loads(row["chunk_ids"]),
        metadata=json.loads(row["metadata"]),
        ingested_at=row["ingested_at"],
        minhash=row["minhash"],
    )


def _record_json(r: DocRecord) -> str:
    d = asdict(r)
    d["minhash"] = r.minhash.hex() if r.minhash else None
    return json.dumps(d)


def _record_from_json(s: str) -> DocRecord:
    d = json.loads(s)
    d["minhash"] = bytes.fromhex(d["minhash"]) if d.get("minhash") else None
    return DocRecord(**d)


class Registry:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    # -- meta ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- documents -------------------------------------------------------------------------

    def get(self, doc_id: str) -> DocRecord | None:
        row = self._db.execute("SELECT * FROM documents WHERE doc_id=?", (doc_id,)).fetchone()
        return None if row is None else _row_to_record(row)

    def get_many(self, doc_ids: Sequence[str]) -> dict[str, DocRecord]:
        out: dict[str, DocRecord] = {}
        ids = list(doc_ids)
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            q = f"SELECT * FROM documents WHERE doc_id IN ({','.join('?' * len(part))})"
            for row in self._db.execute(q, part):
                out[row["doc_id"]] = _row_to_record(row)
        return out

    def find_by_hash(self, content_hash: str) -> str | None:
        row = self._db.execute(
            "SELECT doc_id FROM documents WHERE content_hash=? LIMIT 1", (content_hash,)
        ).fetchone()
        return None if row is None else str(row[0])

    def list_documents(self, limit: int = 1000, offset: int = 0) -> list[DocRecord]:
        rows = self._db.execute(
            "SELECT * FROM documents ORDER BY doc_id LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
        return [_row_to_record(r) for r in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def chunk_count(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(n_chunks), 0) FROM documents").fetchone()[0])

    def minhashes(self) -> Iterator[tuple[str, bytes]]:
        for row in self._db.execute("SELECT doc_id, minhash FROM documents WHERE minhash IS NOT NULL"):
            yield str(row[0]), bytes(row[1])

    # -- the journal -----------------------------------------------------------------------

    def begin(self, changes: Sequence[PendingChange]) -> None:
        """Record intended changes durably before touching the index."""
        with self._tx():
            self._db.executemany(
                "INSERT OR REPLACE INTO pending(doc_id, record, new_ids, old_ids) VALUES (?, ?, ?, ?)",
                [
                    (
                        c.doc_id,
                        _record_json(c.record) if c.record else None,
                        json.dumps(c.new_ids),
                        json.dumps(c.old_ids),
                    )
                    for c in changes
                ],
            )

    def commit(self, changes: Sequence[PendingChange]) -> None:
        """Make the new versions current (or the deletes final) and clear their journal rows."""
        with self._tx():
            for c in changes:
                if c.record is None:
                    self._db.execute("DELETE FROM documents WHERE doc_id=?", (c.doc_id,))
                else:
                    r = c.record
                    self._db.execute(
                        "INSERT OR REPLACE INTO documents(doc_id, version, content_hash, source, title, "
                        "chunk_ids, n_chunks, metadata, ingested_at, minhash) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (
                            r.doc_id,
                            r.version,
                            r.content_hash,
                            r.source,
                            r.title,
                            json.dumps(r.chunk_ids),
                            r.n_chunks,
                            json.dumps(r.metadata),
                            r.ingested_at,
                            r.minhash,
                        ),
                    )
                self._db.execute("DELETE FROM pending WHERE doc_id=?", (c.doc_id,))

    def abandon(self, doc_ids: Sequence[str]) -> None:
        with self._tx():
            self._db.executemany("DELETE FROM pending WHERE doc_id=?", [(d,) for d in doc_ids])

    def pending(self) -> list[PendingChange]:
        rows = self._db.execute("SELECT * FROM pending").fetchall()
        return [
            PendingChange(
                doc_id=r["doc_id"],
                record=_record_from_json(r["record"]) if r["record"] else None,
                new_ids=json.loads(r["new_ids"]),
                old_ids=json.loads(r["old_ids"]),
            )
            for r in rows
        ]

    def _tx(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
