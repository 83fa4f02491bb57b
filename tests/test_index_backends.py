"""`index.kind` end to end: the Engine ingests, searches, answers and deletes on the qdrant backend
(qdrant-client's local mode, the real embedder) as it does on edge; settings and their checks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ragline import Engine
from ragline.config import load_settings
from ragline.config_render import MASK, effective_settings
from ragline.errors import CollectionBusy, ConfigError
from ragline.index.factory import qdrant_name
from ragline.index.qdrant import QdrantIndex, connect, release
from test_engine import SMALL_CHUNKS, doc_id, write_corpus

QUERIES = {
    "quibbleberry festival pies": "rare",
    "how fast does a galaxy recede, redshift": "astronomy",
    "central banks interest rates inflation": "finance",
    "a cat sleeping in the sun": "cat",
}


def _qdrant(tmp_path: Path) -> dict[str, object]:
    return {"kind": "qdrant", "path": str(tmp_path / "qdrant"), "collection_prefix": "t_"}


def test_engine_on_qdrant_answers_like_edge(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "docs")
    edge = make_engine(data_dir=tmp_path / "edge", chunking=SMALL_CHUNKS)
    qdrant = make_engine(data_dir=tmp_path / "q", index=_qdrant(tmp_path), chunking=SMALL_CHUNKS)
    for engine in (edge, qdrant):
        report = engine.ingest([tmp_path / "docs"], collection="docs")
        assert report.added == len(files) and not report.failed
    assert qdrant.collection("docs").index.count() == edge.collection("docs").index.count() > len(files)
    assert isinstance(qdrant.collection("docs").index, QdrantIndex)
    assert not (tmp_path / "q" / "collections" / "docs" / "shard").exists()  # the points live in Qdrant

    for query, key in QUERIES.items():
        for mode in ("hybrid", "dense", "bm25"):
            a = edge.search(query, collection="docs", mode=mode, top_k=3)
            b = qdrant.search(query, collection="docs", mode=mode, top_k=3)
            assert b[0].doc_id == doc_id(files[key]), (query, mode)
            assert [h.chunk_id for h in b] == [h.chunk_id for h in a], (query, mode)
    flt = [f"doc_id={doc_id(files['finance'])}"]
    assert {h.doc_id for h in qdrant.search("galaxy", collection="docs", filters=flt)} == {
        doc_id(files["finance"])
    }

    answer = qdrant.answer("What do astronomers measure redshift for?", collection="docs", mode="extractive")
    assert answer.citations and answer.citations[0].doc_id == doc_id(files["astronomy"])
    assert "redshift" in answer.text.lower()

    # deletes, re-ingest of an unchanged folder, and the journal's view agree with the index
    col = qdrant.collection("docs")
    target = doc_id(files["rare"])
    record = col.registry.get(target)
    assert record is not None
    qdrant.delete(target, collection="docs")
    assert col.index.existing(record.chunk_ids) == set()
    assert all(h.doc_id != target for h in qdrant.search("quibbleberry", collection="docs", top_k=10))
    again = qdrant.ingest([tmp_path / "docs"], collection="docs")
    assert again.added == 1 and again.unchanged == len(files) - 1
    assert col.index.count() == col.registry.chunk_count()


def test_a_collection_reopens_from_qdrant_and_drop_removes_it(
    make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    write_corpus(tmp_path / "docs")
    settings = {"data_dir": tmp_path / "q", "index": _qdrant(tmp_path)}
    first = make_engine(**settings)
    first.ingest([tmp_path / "docs"], collection="docs")
    n = first.collection("docs").index.count()
    first.close()  # the last user closes the local-mode client (and its folder lock)

    second = make_engine(**settings)
    assert second.collection("docs").index.count() == n
    assert second.search("quibbleberry", collection="docs")
    second.drop_collection("docs")
    conn = connect(None, str(tmp_path / "qdrant"), tmp_path)
    try:
        assert not conn.client.collection_exists(qdrant_name(second.settings, "docs"))
    finally:
        release(conn)
    second.ingest([tmp_path / "docs"], collection="docs")  # created anew, with nothing left over
    assert second.collection("docs").index.count() == n


def test_a_collection_stays_on_the_index_it_was_built_on(
    make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    write_corpus(tmp_path / "docs")
    on_edge = make_engine(data_dir=tmp_path / "d")
    on_edge.ingest([tmp_path / "docs"], collection="docs")
    on_edge.close()
    on_qdrant = make_engine(data_dir=tmp_path / "d", index=_qdrant(tmp_path))
    with pytest.raises(
        ConfigError, match=r"lives in the edge index; the configured one is qdrant \(index.kind\)"
    ):
        on_qdrant.search("bread", collection="docs")


def test_a_local_mode_folder_serves_one_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOLDER, str(tmp_path / "qdrant")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(CollectionBusy, match="in use by another ragline process"):
            connect(None, str(tmp_path / "qdrant"), tmp_path)
    finally:
        holder.kill()
        holder.wait()
    release(connect(None, str(tmp_path / "qdrant"), tmp_path))  # free again once it has gone


HOLD_FOLDER = """
import sys, time
from qdrant_client import QdrantClient
client = QdrantClient(path=sys.argv[1])
print("open", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({"kind": "edge", "url": "http://q:6333"}, "kind edge takes no url"),
        ({"kind": "qdrant", "url": "http://q:6333", "path": "/x"}, "not both"),
        ({"kind": "qdrant", "api_key": "k"}, "give its url too"),
        ({"kind": "qdrant", "url": "http://q:port"}, "port in this URL is not a number"),
        ({"kind": "qdrant", "collection_prefix": "a/b"}, "index.collection_prefix"),
        ({"kind": "qdrnt"}, "index.kind"),
    ],
)
def test_index_settings_are_checked(tmp_path: Path, index: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(data_dir=tmp_path, index=index)


def test_the_api_key_is_masked_and_never_in_the_settings_text(tmp_path: Path) -> None:
    s = load_settings(
        data_dir=tmp_path, index={"kind": "qdrant", "url": "http://q:6333", "api_key": "s3cr3t"}
    )
    shown = effective_settings(s)["index"]
    assert shown["api_key"] == MASK and shown["url"] == "http://q:6333"
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(effective_settings(s))
