"""kill -9 during ingestion, for real: a subprocess is SIGKILLed mid-way and the collection reopened.

One data dir goes through several crashes in a row, each at a different moment, while a corpus
of a few hundred multi-chunk documents is ingested over an earlier version of a third of them:

A. `ragline ingest` frozen (SIGSTOP) while a group is journaled but not committed, then SIGKILLed;
B. `ragline ingest` SIGKILLed after a delay, at whatever it was doing;
C. killed just before the registry commit, after the old chunks were deleted (must roll forward);
D. killed after an unflushed index write in the middle of a group;
E. killed in the middle of a delete.

After each crash the collection is reopened with Engine and checked: recovery settled exactly the
journaled changes, in the direction the index contents dictate; no document is half visible; the
index holds exactly the registry's current chunks; updated documents are entirely old or entirely
new; no document ingested before is lost. Finally the same ingest runs to completion.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ragline import Engine
from ragline.config import Settings, load_settings
from ragline.index.edge import EdgeIndex

pytestmark = pytest.mark.slow

N_DOCS = 180
UPDATED = {i for i in range(N_DOCS) if i % 4 == 0}  # ingested in edition 1, then edited
UNCHANGED = {i for i in range(40) if i % 4 == 1}  # ingested before, identical in the new corpus
CHUNKING = {"chunk_tokens": 48, "overlap_tokens": 8}
UPSERT_BATCH = 32
HELPER = Path(__file__).with_name("crash_ingest.py")
RAGLINE = Path(sys.executable).with_name("ragline")

_WORDS = (
    "river mountain engine library window garden signal market harbor forest bridge lantern journey "
    "kernel packet cluster tensor vector search answer question station planet copper silver orange "
    "violet winter summer autumn morning evening captain doctor teacher student farmer baker "
    "painter writer reader number letter record archive folder printer monitor battery cable socket "
    "server client driver module function compiler parser network router switch bucket ladder "
    "hammer needle pocket jacket blanket pillow candle meadow valley glacier canyon desert island "
    "prairie volcano"
)
VOCAB = _WORDS.split()


def _doc(i: int, edition: int) -> dict[str, Any]:
    rng = random.Random(i * 10 + edition)
    n_paragraphs = 2 + (i + edition) % 2
    paragraphs = []
    for p in range(n_paragraphs):
        sentences = []
        for _ in range(2):
            ws = [rng.choice(VOCAB) for _ in range(rng.randint(8, 14))]
            sentences.append(f"{ws[0].capitalize()} {' '.join(ws[1:])} item{i}x{edition}p{p}.")
        paragraphs.append(" ".join(sentences))
    title = f"Report {i} (edition {edition})" if i in UPDATED else f"Report {i}"
    return {"_id": f"doc-{i:04d}", "title": title, "text": "\n\n".join(paragraphs)}


def _write_jsonl(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def _settings(data: Path) -> Settings:
    return load_settings(data_dir=data, chunking=CHUNKING, ingest={"upsert_batch": UPSERT_BATCH})


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    env.update(
        {
            "RAGLINE_DATA_DIR": str(data),
            "RAGLINE_CHUNKING__CHUNK_TOKENS": str(CHUNKING["chunk_tokens"]),
            "RAGLINE_CHUNKING__OVERLAP_TOKENS": str(CHUNKING["overlap_tokens"]),
            "RAGLINE_INGEST__UPSERT_BATCH": str(UPSERT_BATCH),
        }
    )
    return env


@dataclass
class Snapshot:
    """The registry as the killed process left it, read before anything reopens the collection."""

    versions: dict[str, str]
    pending: dict[str, dict[str, Any]]  # doc_id -> {"version": new version or None, "new_ids", "old_ids"}


def _connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)


def _counts(con: sqlite3.Connection) -> tuple[int, int]:
    docs = con.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
    pending = con.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
    return int(docs), int(pending)


def _snapshot(db: Path) -> Snapshot:
    con = _connect(db)
    try:
        versions = {r[0]: r[1] for r in con.execute("SELECT doc_id, version FROM documents")}
        pending = {}
        for doc_id, record, new_ids, old_ids in con.execute(
            "SELECT doc_id, record, new_ids, old_ids FROM pending"
        ):
            pending[doc_id] = {
                "version": json.loads(record)["version"] if record else None,
                "new_ids": json.loads(new_ids),
                "old_ids": json.loads(old_ids),
            }
        return Snapshot(versions, pending)
    finally:
        con.close()


class Corpus:
    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.db = self.data / "collections" / "default" / "registry.sqlite"
        self.shard = self.data / "collections" / "default" / "shard"
        self.v1 = _write_jsonl(root / "v1.jsonl", [_doc(i, 1) for i in sorted(UPDATED | UNCHANGED)])
        self.v2 = _write_jsonl(root / "v2.jsonl", [_doc(i, 2 if i in UPDATED else 1) for i in range(N_DOCS)])
        self.v1_titles = {f"doc-{i:04d}": _doc(i, 1)["title"] for i in UPDATED | UNCHANGED}
        self.v2_titles = {f"doc-{i:04d}": _doc(i, 2)["title"] for i in range(N_DOCS)}
        self.logs = root / "logs"
        self.logs.mkdir()
        self.runs = 0

    def start(self, args: list[str]) -> subprocess.Popen[bytes]:
        self.runs += 1
        log = (self.logs / f"run{self.runs}.log").open("wb")
        return subprocess.Popen(args, env=_env(self.data), stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return (self.logs / f"run{self.runs}.log").read_text(errors="replace")[-3000:]

    def wait_killed(self, proc: subprocess.Popen[bytes]) -> None:
        rc = proc.wait(timeout=120)
        assert rc == -signal.SIGKILL, f"expected a SIGKILL death, got rc={rc}:\n{self.log()}"


def _cli_ingest(corpus: Corpus) -> list[str]:
    return [str(RAGLINE), "ingest", str(corpus.v2), "--json"]


def _helper(*args: str) -> list[str]:
    return [sys.executable, str(HELPER), *args]


def _all_points(engine: Engine) -> list[Any]:
    col = engine.collection()
    n = col.index.count()
    qvec = engine.embedder.embed_queries(["report"])[0]
    hits = engine.search("report", mode="dense", top_k=n + 10, query_vector=qvec, exact=True)
    assert len(hits) == n
    return hits


def _predict(corpus: Corpus, snap: Snapshot, dim: int) -> dict[str, bool]:
    """For each journaled change: did every new chunk reach the index (so it must roll forward)?"""
    index = EdgeIndex(corpus.shard, dim)
    try:
        return {
            d: len(index.existing(p["new_ids"])) == len(set(p["new_ids"])) for d, p in snap.pending.items()
        }
    finally:
        index.close()


def _check_recovered(
    corpus: Corpus, make: Callable[[], Engine], snap: Snapshot, forward: dict[str, bool]
) -> dict[str, str]:
    engine = make()
    try:
        col = engine.collection()
        assert col.recovered == len(snap.pending)
        assert col.registry.pending() == []
        records = {r.doc_id: r for r in engine.documents(limit=100_000)}

        # recovery went the way the index contents dictate, and touched nothing else
        for doc_id, version in snap.versions.items():
            if doc_id not in snap.pending:
                assert records[doc_id].version == version
        for doc_id, change in snap.pending.items():
            if forward[doc_id]:
                if change["version"] is None:
                    assert doc_id not in records
                else:
                    assert records[doc_id].version == change["version"]
            elif doc_id in snap.versions:
                assert records[doc_id].version == snap.versions[doc_id]
            else:
                assert doc_id not in records
            if not forward[doc_id]:
                assert not col.index.existing([i for i in change["new_ids"] if i not in change["old_ids"]])

        # index == registry: every chunk of every registered document, and nothing else
        registry_ids = [cid for r in records.values() for cid in r.chunk_ids]
        assert len(registry_ids) == len(set(registry_ids))
        assert col.index.existing(registry_ids) == set(registry_ids)
        assert col.index.count() == col.registry.chunk_count() == len(registry_ids)
        points = _all_points(engine)
        assert {p.chunk_id for p in points} == set(registry_ids)
        by_doc: dict[str, list[Any]] = {}
        for p in points:
            by_doc.setdefault(p.doc_id, []).append(p)
        for doc_id, rec in records.items():
            chunks = by_doc[doc_id]
            assert {p.payload["version"] for p in chunks} == {rec.version}
            assert sorted(p.payload["chunk_index"] for p in chunks) == list(range(rec.n_chunks))
            # entirely one edition: every chunk carries the registry's title
            assert {p.title for p in chunks} == {rec.title}
            assert rec.title in (corpus.v1_titles.get(doc_id), corpus.v2_titles[doc_id])
        # nothing ingested before the crashes is ever lost
        assert set(corpus.v1_titles) <= set(records)
        return {d: r.version for d, r in records.items()}
    finally:
        engine.close()


def test_kill_9_during_ingest(tmp_path: Path, embedder: Any) -> None:
    t0 = time.perf_counter()
    corpus = Corpus(tmp_path)

    def make() -> Engine:
        return Engine(_settings(corpus.data), embedder=embedder)

    with make() as engine:
        first = engine.ingest([corpus.v1])
        assert first.added == len(UPDATED | UNCHANGED) and not first.failed
    base = _snapshot(corpus.db).versions
    timings = [f"edition 1: {time.perf_counter() - t0:.1f}s"]

    def crashed(label: str, require_pending: bool) -> None:
        snap = _snapshot(corpus.db)
        if require_pending:
            assert snap.pending, f"{label}: the kill left nothing journaled"
        forward = _predict(corpus, snap, embedder.dim)
        versions = _check_recovered(corpus, make, snap, forward)
        n_fwd = sum(forward.values())
        timings.append(
            f"{label}: {len(versions)} docs, {len(snap.pending)} journaled "
            f"({n_fwd} rolled forward, {len(snap.pending) - n_fwd} back) at {time.perf_counter() - t0:.1f}s"
        )

    # A. freeze `ragline ingest` while a group is journaled, then SIGKILL it
    proc = corpus.start(_cli_ingest(corpus))
    con = _connect(corpus.db)
    try:
        while proc.poll() is None:
            docs, pending = _counts(con)
            if docs - len(base) >= 10 and pending:
                os.kill(proc.pid, signal.SIGSTOP)
                if _counts(con)[1]:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.002)
    finally:
        con.close()
    corpus.wait_killed(proc)
    crashed("A (mid-group)", require_pending=True)

    # B. SIGKILL after a delay, whatever it is doing
    before = len(_snapshot(corpus.db).versions)
    proc = corpus.start(_cli_ingest(corpus))
    con = _connect(corpus.db)
    try:
        while proc.poll() is None and _counts(con)[0] - before < 5:
            time.sleep(0.01)
    finally:
        con.close()
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    corpus.wait_killed(proc)
    crashed("B (after a delay)", require_pending=False)

    # C. after the old chunks were deleted and flushed, before the registry commit
    proc = corpus.start(_helper("--die", "before:commit:2", str(corpus.v2)))
    corpus.wait_killed(proc)
    crashed("C (before commit)", require_pending=True)

    # D. after an index write that was never flushed, in the middle of the second group
    proc = corpus.start(_helper("--die", "after:upsert:3", str(corpus.v2)))
    corpus.wait_killed(proc)
    crashed("D (unflushed upsert)", require_pending=True)

    # E. in the middle of a delete: chunks gone from the index, registry not yet committed
    victim = "doc-0004"  # an updated document, present since edition 1
    proc = corpus.start(_helper("--die", "before:commit:1", "--delete", victim))
    corpus.wait_killed(proc)
    snap = _snapshot(corpus.db)
    assert set(snap.pending) == {victim} and snap.pending[victim]["version"] is None
    corpus.v1_titles.pop(victim)  # deleted on purpose: no longer expected to survive
    crashed("E (mid-delete)", require_pending=True)
    with make() as engine:
        assert victim not in {r.doc_id for r in engine.documents(limit=100_000)}

    # the same ingest, run again, completes: every document exactly once, the new edition
    with make() as engine:
        report = engine.ingest([corpus.v2])
        assert not report.failed and report.duplicates == report.near_duplicates == 0
        assert report.added + report.updated + report.unchanged == N_DOCS
        assert report.unchanged > 0  # work done before the crashes is kept
        col = engine.collection()
        records = {r.doc_id: r for r in engine.documents(limit=100_000)}
        assert len(records) == N_DOCS == col.registry.count()
        assert {r.title for r in records.values()} == set(corpus.v2_titles.values())
        points = _all_points(engine)
        ids = [p.chunk_id for p in points]
        assert len(ids) == len(set(ids)) == col.registry.chunk_count() == col.index.count()
        keys = [(p.doc_id, p.payload["chunk_index"]) for p in points]
        assert len(keys) == len(set(keys))
        assert set(ids) == {cid for r in records.values() for cid in r.chunk_ids}
        # an old edition's unique words are gone; the new edition's are found
        old = engine.search("item8x1p0", mode="bm25", top_k=10)
        assert all(h.doc_id != "doc-0008" for h in old)
        new = engine.search("item8x2p0", mode="bm25", top_k=10)
        assert new and new[0].doc_id == "doc-0008"
    timings.append(f"final: {report.to_dict()} at {time.perf_counter() - t0:.1f}s")

    with make() as engine:
        again = engine.ingest([corpus.v2])
        assert again.unchanged == N_DOCS and again.added == again.updated == 0
    print("\n" + "\n".join(timings))
