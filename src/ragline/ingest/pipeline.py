"""The ingestion pipeline: files -> documents -> chunks -> embeddings -> index, journaled.

Documents are processed in groups (about ``upsert_batch`` chunks). For each
group: the journal records the intended changes, the chunks are embedded and
written, the index is flushed, the old versions' chunks are deleted, and the
registry commits the group in one transaction (see registry.py for why this
survives kill -9).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ragline.collection import Collection
from ragline.config import Settings
from ragline.embed.base import Embedder
from ragline.errors import IngestCancelled, ParseError
from ragline.index.base import IndexPoint
from ragline.ingest.chunking import Chunker, chunk_id_for, content_hash
from ragline.ingest.dedup import NearDuplicateIndex
from ragline.ingest.isolation import ParsePool, shared_pool
from ragline.ingest.parsers import ParseLimits, iter_jsonl, parse_file, supported_suffixes
from ragline.ingest.registry import DocRecord, PendingChange
from ragline.types import CORE_FIELDS, Chunk, FileFailure, IngestReport, ParsedDocument


@dataclass(slots=True)
class Progress:
    docs_done: int
    docs_total: int
    chunks_done: int
    elapsed: float


#: Bumped when what is stored with each chunk changes (2: the answer window): part of every
#: document's version, so the next ingest rewrites documents stored the old way.
PAYLOAD_VERSION = 2


ProgressCallback = Callable[[Progress], None]
#: Polled between documents and between embedding batches; True stops the run (IngestCancelled).
StopCheck = Callable[[], bool]


@dataclass(slots=True)
class _Prepared:
    record: DocRecord
    chunks: list[Chunk]
    old_ids: list[str]
    is_update: bool


def discover(paths: Sequence[str | Path], report: IngestReport) -> list[Path]:
    """Expand directories (recursively, skipping hidden entries) into files; report unreadable paths."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            report.failed.append(FileFailure(str(p), "no such file or directory"))
        elif p.is_dir():
            if not os.access(p, os.R_OK | os.X_OK):
                report.failed.append(FileFailure(str(p), "permission denied"))
                continue
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for n in sorted(names):
                    if n.startswith("."):
                        continue
                    f = Path(root) / n
                    if f.suffix.lower() in supported_suffixes():
                        files.append(f)
        else:
            files.append(p)
    return files


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 1


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        collection: Collection,
        should_stop: StopCheck | None = None,
        parse_isolation: Literal["inline", "process"] | None = None,
    ) -> None:
        """``parse_isolation`` overrides ``ingest.parse_isolation`` (the server's uploads: "process")."""
        self._settings = settings
        self._embedder = embedder
        self._col = collection
        self._should_stop = should_stop
        self._limits = ParseLimits.from_settings(settings.ingest)
        isolation = parse_isolation or settings.ingest.parse_isolation
        self._pool: ParsePool | None = shared_pool(settings.ingest) if isolation == "process" else None
        c = settings.chunking
        self._chunker = Chunker.from_settings(embedder, c)
        self._fingerprint = hashlib.sha256(
            json.dumps(
                {
                    "chunking": c.model_dump(),
                    "embedder": embedder.name,
                    "cap": self._chunker.capacity,
                    "payload": PAYLOAD_VERSION,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()
        self._near: NearDuplicateIndex | None = None
        if settings.ingest.near_duplicate_detection:
            self._near = NearDuplicateIndex(
                settings.ingest.near_duplicate_threshold, settings.ingest.minhash_permutations
            )
            self._near.load(collection.registry.minhashes())

    # -- entry points ---------------------------------------------------------------------

    def ingest_paths(
        self,
        paths: Sequence[str | Path],
        metadata: dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> IngestReport:
        report = IngestReport()
        start = time.perf_counter()
        files = discover(paths, report)
        total = sum(_count_lines(f) if f.suffix.lower() == ".jsonl" else 1 for f in files)
        docs = self._iter_documents(files, report, metadata or {})
        self._run(docs, report, total, progress, start)
        return report

    def ingest_documents(
        self,
        documents: Iterable[ParsedDocument],
        progress: ProgressCallback | None = None,
        total: int = 0,
    ) -> IngestReport:
        report = IngestReport()
        self._run(iter(documents), report, total, progress, time.perf_counter())
        return report

    # -- parsing ---------------------------------------------------------------------------

    def _iter_documents(
        self, files: list[Path], report: IngestReport, metadata: dict[str, Any]
    ) -> Iterator[ParsedDocument]:
        limit = self._settings.ingest.max_file_bytes
        for f in files:
            try:
                size = f.stat().st_size
                if size > limit:
                    report.failed.append(
                        FileFailure(str(f), f"file too large ({size} bytes > limit {limit})")
                    )
                    continue
                if not os.access(f, os.R_OK):
                    report.failed.append(FileFailure(str(f), "permission denied"))
                    continue
                doc_id = str(f.resolve())
                pool, timeout = self._pool, self._settings.ingest.parse_timeout_s
                if f.suffix.lower() == ".jsonl":
                    lines = (
                        iter_jsonl(f)
                        if pool is None
                        else pool.parse_lines(f, timeout_s=timeout, should_stop=self._should_stop)
                    )
                    for item in lines:
                        if isinstance(item, ParseError):
                            report.failed.append(FileFailure(str(f), str(item)))
                        else:
                            item.metadata = {**metadata, **item.metadata}
                            yield item
                    continue
                docs = (
                    parse_file(f, doc_id, self._limits)
                    if pool is None
                    else pool.parse(f, doc_id, self._limits, timeout_s=timeout, should_stop=self._should_stop)
                )
                for doc in docs:
                    doc.metadata = {**metadata, **doc.metadata}
                    yield doc
            except ParseError as e:
                report.failed.append(FileFailure(str(f), str(e)))
            except PermissionError:
                report.failed.append(FileFailure(str(f), "permission denied"))
            except IsADirectoryError:
                report.failed.append(FileFailure(str(f), "is a directory"))
            except OSError as e:
                report.failed.append(FileFailure(str(f), f"cannot read: {e.strerror or 'I/O error'}"))

    # -- the main loop -----------------------------------------------------------------------

    def _run(
        self,
        docs: Iterator[ParsedDocument],
        report: IngestReport,
        total: int,
        progress: ProgressCallback | None,
        start: float,
    ) -> None:
        group: list[_Prepared] = []
        group_chunks = 0
        seen_hashes: dict[str, str] = {}
        done = 0
        batch = self._settings.ingest.upsert_batch
        wrote = False

        def tick() -> None:
            if progress:
                progress(Progress(done, max(total, done), report.chunks, time.perf_counter() - start))

        for doc in docs:
            self._check_stop()
            if any(p.record.doc_id == doc.doc_id for p in group):
                # The same id twice in one run: commit the first, so that the second replaces it
                # (prepared against the same old version, the first one's chunks would be orphaned).
                self._write_group(group, report)
                wrote = True
                group, group_chunks = [], 0
            prepared = self._prepare(doc, report, seen_hashes)
            done += 1
            if prepared is None:
                tick()
                continue
            group.append(prepared)
            group_chunks += len(prepared.chunks)
            if group_chunks >= batch:
                self._write_group(group, report)
                wrote = True
                group, group_chunks = [], 0
            tick()
        if group:
            self._write_group(group, report)
            wrote = True
        if wrote and report.chunks >= 1000:
            self._col.index.optimize()  # build HNSW after a bulk load
        report.seconds = time.perf_counter() - start
        tick()

    def _prepare(
        self, doc: ParsedDocument, report: IngestReport, seen_hashes: dict[str, str]
    ) -> _Prepared | None:
        # A title that is only the file name is not content: the same text under two names is a duplicate.
        title = "" if doc.title == Path(doc.source).stem else doc.title
        chash = content_hash(f"{title}\n{doc.text}")
        version = hashlib.sha256(
            f"{chash}|{json.dumps(doc.metadata, sort_keys=True, default=str)}|{self._fingerprint}".encode()
        ).hexdigest()[:20]
        max_chunks = self._settings.ingest.max_chunks_per_document
        # a document cut at the cap is stored under its own version: raising the cap re-ingests it
        cut_version = hashlib.sha256(f"{version}|first {max_chunks} chunks".encode()).hexdigest()[:20]
        for warning in doc.warnings:
            report.warnings.append(FileFailure(doc.source, warning))
        existing = self._col.registry.get(doc.doc_id)
        if existing is not None and existing.version in (version, cut_version):
            report.unchanged += 1
            return None
        dup_of = seen_hashes.get(chash) or self._col.registry.find_by_hash(chash)
        if dup_of is not None and dup_of != doc.doc_id:
            report.duplicates += 1
            return None
        sig = None
        if self._near is not None:
            sig = self._near.signature(doc.text)
            if self._near.find(sig, exclude=doc.doc_id) is not None:
                report.near_duplicates += 1
                return None
        chunks = self._chunker.chunk(doc, version, max_chunks=max_chunks)
        if not chunks:
            report.failed.append(FileFailure(doc.source, "no text left after cleaning"))
            return None
        if len(chunks) > max_chunks:
            over = f"document has more than {max_chunks} chunks (limit ingest.max_chunks_per_document)"
            if self._settings.ingest.on_limit != "truncate":
                report.failed.append(FileFailure(doc.source, over))
                return None
            report.warnings.append(
                FileFailure(doc.source, f"{over}: only the first {max_chunks} were ingested")
            )
            version = cut_version
            chunks = chunks[:max_chunks]
            for ch in chunks:
                ch.chunk_id = chunk_id_for(doc.doc_id, version, ch.index)
        seen_hashes[chash] = doc.doc_id
        now = datetime.now(UTC).isoformat()
        for ch in chunks:
            payload: dict[str, Any] = {k: v for k, v in doc.metadata.items() if k not in CORE_FIELDS}
            payload.update(
                {
                    "doc_id": doc.doc_id,
                    "source": doc.source,
                    "title": ch.title,
                    "section": ch.section,
                    "page": ch.page,
                    "chunk_index": ch.index,
                    "content_hash": chash,
                    "version": version,
                    "ingested_at": now,
                    "text": ch.text,
                    "n_tokens": ch.n_tokens,
                }
            )
            if ch.context:  # the chunk within its section's text: what answers are built from
                payload["window"] = ch.context
            ch.metadata = payload
        record = DocRecord(
            doc_id=doc.doc_id,
            version=version,
            content_hash=chash,
            source=doc.source,
            title=doc.title,
            chunk_ids=[c.chunk_id for c in chunks],
            metadata=doc.metadata,
            ingested_at=now,
            minhash=NearDuplicateIndex.to_bytes(sig) if sig is not None else None,
        )
        if self._near is not None and sig is not None:
            self._near.add(doc.doc_id, sig)
        return _Prepared(record, chunks, existing.chunk_ids if existing else [], existing is not None)

    def _check_stop(self) -> None:
        if self._should_stop is not None and self._should_stop():
            raise IngestCancelled("ingestion cancelled")

    def _write_group(self, group: list[_Prepared], report: IngestReport) -> None:
        chunks = [c for p in group for c in p.chunks]
        title_weight = self._settings.chunking.lexical_title_weight
        batch = self._settings.ingest.upsert_batch
        # one embedding call per upsert batch, not per group: a large document is embedded (and
        # can be cancelled) a bounded batch at a time
        points: list[IndexPoint] = []
        for i in range(0, len(chunks), batch):
            self._check_stop()
            part = chunks[i : i + batch]
            vectors = self._embedder.embed_documents([c.embedding_text() for c in part])
            points.extend(
                IndexPoint(
                    id=c.chunk_id,
                    dense=vectors[j],
                    lexical_text=c.lexical_text(title_weight),
                    payload=c.metadata,
                )
                for j, c in enumerate(part)
            )
        self._check_stop()  # the last chance before the journal: nothing of this group is written yet
        changes = [PendingChange(p.record.doc_id, p.record, p.record.chunk_ids, p.old_ids) for p in group]
        col = self._col
        with col.write_lock:
            for key, value in {k: v for c in chunks for k, v in c.metadata.items()}.items():
                if key not in ("text", "window", "version", "content_hash", "title", "section", "n_tokens"):
                    col.index.ensure_payload_index(key, value)
            col.registry.begin(changes)
            for i in range(0, len(points), batch):
                col.index.upsert(points[i : i + batch])
            col.index.flush()
            stale = [i for p in group for i in p.old_ids if i not in set(p.record.chunk_ids)]
            if stale:
                col.index.delete(stale)
                col.index.flush()
            col.registry.commit(changes)
        for p in group:
            if p.is_update:
                report.updated += 1
            else:
                report.added += 1
            report.doc_ids.append(p.record.doc_id)
        report.chunks += len(chunks)
