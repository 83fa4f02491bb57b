"""The Engine end to end, on real components: the ONNX embedder and the embedded Qdrant shard.

Covers idempotent re-ingestion, updates and deletes leaving no orphan chunks, metadata changes,
filters applied inside the search (not after it), the three search modes, convex fusion, filter
parsing errors and the `ragline search/list/delete` commands in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fixtures import write_jsonl, write_pdf
from ragline import Engine
from ragline.errors import CollectionNotFound, DocumentNotFound, InvalidFilter
from ragline.types import Hit

# Small chunks, so that the short documents below span several chunks each.
SMALL_CHUNKS = {"chunk_tokens": 48, "overlap_tokens": 8}
RAGLINE = Path(sys.executable).with_name("ragline")

BREAD = """# Sourdough baking

A sourdough starter is a living culture of wild yeast and lactic acid bacteria kept in flour and water.
Feed the starter every day so that it doubles in volume a few hours after each feeding.

Mix the flour, water and salt, then fold the dough several times during the first rise.
A long cold proof in the refrigerator develops flavour and makes the loaf easier to score.

Bake the bread in a very hot covered pot so that steam keeps the crust soft while it expands.
Remove the lid for the last twenty minutes to brown the crust and get a crackling loaf.
"""

CAT = (
    "The feline slept on the warm windowsill all afternoon, purring softly as the light moved "
    "slowly across the wooden floor of the quiet room."
)

ASTRONOMY = """# Observing galaxies

Large telescopes collect faint photons from distant galaxies and nebulae.
Astronomers measure redshift to estimate how fast a galaxy recedes from the Milky Way.

Spectrographs split the collected starlight into its colours, revealing chemical elements.
"""

FINANCE = (
    "Central banks raise interest rates to fight inflation; bond prices fall when yields climb, "
    "and investors rebalance their portfolios between equities and fixed income."
)

RARE = (
    "The annual quibbleberry festival fills the village square with stalls, music and pies "
    "made from the tart purple fruit."
)


def write_corpus(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "bread": root / "bread.md",
        "cat": root / "cat.txt",
        "astronomy": root / "astronomy.md",
        "finance": root / "finance.txt",
        "rare": root / "rare.txt",
    }
    texts = {"bread": BREAD, "cat": CAT, "astronomy": ASTRONOMY, "finance": FINANCE, "rare": RARE}
    for key, path in files.items():
        path.write_text(texts[key], encoding="utf-8")
    return files


def doc_id(path: Path) -> str:
    return str(path.resolve())


def all_points(engine: Engine, collection: str | None = None) -> list[Hit]:
    """Every chunk in the index, via an exact dense search with a limit above the point count."""
    col = engine.collection(collection)
    n = col.index.count()
    if n == 0:
        return []
    qvec = engine.embedder.embed_queries(["everything"])[0]
    hits = engine.search(
        "everything", collection=collection, mode="dense", top_k=n + 10, query_vector=qvec, exact=True
    )
    assert len(hits) == n
    return hits


def assert_consistent(engine: Engine, collection: str | None = None) -> None:
    """Index and registry agree: same chunk ids, every payload names its registry version."""
    col = engine.collection(collection)
    records = {r.doc_id: r for r in engine.documents(collection=collection, limit=100_000)}
    registry_ids = [cid for r in records.values() for cid in r.chunk_ids]
    assert len(registry_ids) == len(set(registry_ids))
    points = all_points(engine, collection)
    assert {p.chunk_id for p in points} == set(registry_ids)
    assert col.index.count() == col.registry.chunk_count() == len(registry_ids)
    for p in points:
        rec = records[p.doc_id]
        assert p.payload["version"] == rec.version
    assert col.registry.pending() == []


# -- idempotence, updates, deletes ---------------------------------------------------------


def test_reingest_unchanged_is_idempotent(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "docs")
    engine = make_engine(chunking=SMALL_CHUNKS)
    first = engine.ingest([tmp_path / "docs"])
    assert first.added == len(files) and first.updated == 0 and not first.failed
    col = engine.collection()
    count = col.index.count()
    assert count == first.chunks > len(files)  # some documents span several chunks
    versions = {r.doc_id: (r.version, r.chunk_ids) for r in engine.documents()}

    second = engine.ingest([tmp_path / "docs"])
    assert second.unchanged == len(files)
    assert second.added == second.updated == second.chunks == 0
    assert col.index.count() == count
    assert {r.doc_id: (r.version, r.chunk_ids) for r in engine.documents()} == versions

    # and across a fresh process-like reopen of the collection
    engine.close()
    again = make_engine(chunking=SMALL_CHUNKS)
    third = again.ingest([tmp_path / "docs"])
    assert third.unchanged == len(files) and third.added == 0
    assert again.collection().index.count() == count
    assert_consistent(again)


def test_update_replaces_old_chunks(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "docs")
    notes = tmp_path / "docs" / "notes.md"
    notes.write_text(
        "# Field notes\n\n"
        + "\n\n".join(
            f"Paragraph {i}: the quokkavelt migrates along the ridge at dawn, grazing on shrubs "
            f"and resting under eucalyptus trees until the heat of the day passes."
            for i in range(4)
        ),
        encoding="utf-8",
    )
    engine = make_engine(chunking=SMALL_CHUNKS)
    engine.ingest([tmp_path / "docs"])
    col = engine.collection()
    old = col.registry.get(doc_id(notes))
    assert old is not None and old.n_chunks >= 3
    old_hits = engine.search("quokkavelt", mode="bm25", top_k=20)
    assert old_hits and all(h.doc_id == doc_id(notes) for h in old_hits)

    notes.write_text("# Field notes\n\nThe zanderpike hunts in cold lakes.", encoding="utf-8")
    report = engine.ingest([tmp_path / "docs"])
    assert report.updated == 1 and report.added == 0 and report.unchanged == len(files)

    new = col.registry.get(doc_id(notes))
    assert new is not None and new.version != old.version and new.n_chunks == 1
    assert col.index.existing(old.chunk_ids) == set()
    assert col.index.existing(new.chunk_ids) == set(new.chunk_ids)
    for mode in ("bm25", "hybrid", "dense"):
        hits = engine.search("quokkavelt migrates along the ridge", mode=mode, top_k=50)
        assert not any("quokkavelt" in h.text for h in hits), mode
        assert not any(h.chunk_id in old.chunk_ids for h in hits), mode
    hits = engine.search("zanderpike", mode="bm25", top_k=5)
    assert hits and hits[0].doc_id == doc_id(notes) and "zanderpike" in hits[0].text
    assert hits[0].payload["version"] == new.version
    assert_consistent(engine)


def test_same_id_twice_in_one_run_leaves_no_orphans(
    make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    """The later occurrence wins and the earlier one's chunks do not linger in the index."""
    engine = make_engine()
    for round_, (first, second) in enumerate([("alphawave", "betawave"), ("gammawave", "deltawave")]):
        write_jsonl(
            tmp_path / "a.jsonl",
            [
                {"_id": "X", "text": f"The {first} edition of the document about rivers."},
                {"_id": "Y", "text": f"Another document about mountains, round {round_}."},
            ],
        )
        write_jsonl(tmp_path / "b.jsonl", [{"_id": "X", "text": f"The {second} edition about lakes."}])
        report = engine.ingest([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
        assert not report.failed
        assert engine.search(first, mode="bm25", top_k=10) == []
        hits = engine.search(second, mode="bm25", top_k=10)
        assert [h.doc_id for h in hits] == ["X"]
        assert_consistent(engine)
    assert engine.search("alphawave gammawave", mode="bm25", top_k=10) == []


def test_delete_removes_every_chunk(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "docs")
    engine = make_engine(chunking=SMALL_CHUNKS)
    engine.ingest([tmp_path / "docs"])
    col = engine.collection()
    before = col.index.count()
    target = doc_id(files["bread"])
    rec = col.registry.get(target)
    assert rec is not None and rec.n_chunks >= 2

    deleted = engine.delete(target)
    assert deleted.doc_id == target and deleted.n_chunks == rec.n_chunks
    assert col.index.count() == before - rec.n_chunks
    assert col.registry.get(target) is None
    assert col.index.existing(rec.chunk_ids) == set()
    assert target not in {p.doc_id for p in all_points(engine)}
    for mode in ("bm25", "dense", "hybrid"):
        hits = engine.search("sourdough starter bread crust", mode=mode, top_k=50)
        assert all(h.doc_id != target for h in hits), mode
    assert engine.search("sourdough", filters=[f"doc_id={target}"], top_k=10) == []
    assert_consistent(engine)

    with pytest.raises(DocumentNotFound):
        engine.delete(target)
    with pytest.raises(DocumentNotFound):
        engine.delete("no-such-document")
    with pytest.raises(CollectionNotFound):
        engine.delete(target, collection="never-created")
    assert col.index.count() == before - rec.n_chunks

    # re-ingesting brings it back as a new document
    report = engine.ingest([tmp_path / "docs"])
    assert report.added == 1 and report.unchanged == len(files) - 1
    assert col.index.count() == before
    assert_consistent(engine)


def test_metadata_change_reindexes(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "docs")
    engine = make_engine(chunking=SMALL_CHUNKS)
    engine.ingest([tmp_path / "docs"], metadata={"team": "red"})
    col = engine.collection()
    count = col.index.count()
    old_ids = {r.doc_id: r.chunk_ids for r in engine.documents()}
    assert {h.doc_id for h in engine.search("bread", filters=["team=red"], top_k=50)} == {
        doc_id(p) for p in files.values()
    }

    same = engine.ingest([tmp_path / "docs"], metadata={"team": "red"})
    assert same.unchanged == len(files) and same.updated == 0

    changed = engine.ingest([tmp_path / "docs"], metadata={"team": "blue"})
    assert changed.updated == len(files) and changed.added == 0 and changed.unchanged == 0
    assert col.index.count() == count  # same text, same chunks: replaced, not added
    for r in engine.documents():
        assert r.metadata == {"team": "blue"}
        assert col.index.existing(old_ids[r.doc_id]) == set()
    assert engine.search("bread", filters=["team=red"], top_k=50) == []
    blue = engine.search("bread", filters=["team=blue"], top_k=50)
    assert {h.doc_id for h in blue} == {doc_id(p) for p in files.values()}
    assert all(h.payload["team"] == "blue" for h in blue)
    assert_consistent(engine)


# -- filters --------------------------------------------------------------------------------

FILTER_DOCS = [
    {"_id": "d1", "title": "Pendulum clocks", "text": "Pendulum clocks keep time with a swinging weight."},
    {"_id": "d2", "title": "Cell membranes", "text": "Lipid bilayers form the membrane around each cell."},
    {"_id": "d3", "title": "Catalysts", "text": "Enzymes and metal catalysts lower activation energy."},
    {"_id": "d4", "title": "Gene editing", "text": "Guide RNA steers the nuclease to the target gene."},
]
FILTER_META = {
    "d1": {"category": "physics", "year": 2015, "published": "2015-03-01", "reviewed": True},
    "d2": {"category": "biology", "year": 2019, "published": "2019-12-31", "reviewed": False},
    "d3": {"category": "chemistry", "year": 2020, "published": "2020-01-01", "reviewed": True},
    "d4": {"category": "biology", "year": 2023, "published": "2023-06-15", "reviewed": False},
}


@pytest.fixture(scope="module")
def filter_engine(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Any:
    """A collection of four JSONL documents with metadata and a three-page PDF (no metadata)."""
    from ragline.config import load_settings

    root = tmp_path_factory.mktemp("filters")
    write_jsonl(root / "papers.jsonl", [{**d, "metadata": FILTER_META[d["_id"]]} for d in FILTER_DOCS])
    pdf = write_pdf(
        root / "manual.pdf",
        [
            ["Page one explains how to unpack the pendulum clock."],
            ["Page two explains how to wind the clock spring."],
            ["Page three explains how to oil the clock gears."],
        ],
        title="Clock manual",
    )
    engine = Engine(load_settings(data_dir=root / "data"), embedder=embedder)
    report = engine.ingest([root / "papers.jsonl", pdf])
    assert report.added == 5 and not report.failed
    yield engine, doc_id(pdf)
    engine.close()


def _doc_ids(hits: list[Hit]) -> set[str]:
    return {h.doc_id for h in hits}


PDF = "<pdf>"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["category=biology"], {"d2", "d4"}),
        (["category!=biology"], {"d1", "d3", PDF}),  # a document without the field is not biology
        (["category!=biology", "year>=0"], {"d1", "d3"}),
        (["category=physics|chemistry"], {"d1", "d3"}),
        (["category!=physics|chemistry"], {"d2", "d4", PDF}),
        (["year=2019"], {"d2"}),
        (["year=2015|2023"], {"d1", "d4"}),
        (["year<2020"], {"d1", "d2"}),
        (["year>=2020"], {"d3", "d4"}),
        (["year>2015", "year<=2020"], {"d2", "d3"}),
        (["year>=2019.5"], {"d3", "d4"}),
        (["published>=2020-01-01"], {"d3", "d4"}),
        (["published<2020-01-01"], {"d1", "d2"}),
        (["published>=2019-12-31", "published<2023-01-01"], {"d2", "d3"}),
        (["published>2019-12-31T12:00:00"], {"d3", "d4"}),
        (["doc_id=d3"], {"d3"}),
        (["doc_id!=d3", "category=biology|chemistry"], {"d2", "d4"}),
        (["page>=2"], {PDF}),
        (["page=1"], {PDF}),
        (["ingested_at>=2000-01-01"], {"d1", "d2", "d3", "d4", PDF}),
        (["ingested_at<2000-01-01"], set()),
        (["year>2100"], set()),
        (["category=geology"], set()),
        (["author=nobody"], set()),  # a field no document has
        (["category=biology", "year<2019"], set()),
    ],
)
@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_filters(filter_engine: Any, filters: list[str], expected: set[str], mode: str) -> None:
    engine, pdf_id = filter_engine
    expected = {pdf_id if d == PDF else d for d in expected}
    # the query shares words with every document, so bm25 has candidates everywhere
    query = "clock cell membrane catalysts gene pendulum enzymes page"
    hits = engine.search(query, mode=mode, top_k=50, filters=filters)
    assert _doc_ids(hits) == expected
    if not expected:
        assert hits == []  # a filter that matches nothing gives nothing, never unfiltered hits


def test_boolean_metadata_filter(filter_engine: Any) -> None:
    engine, _ = filter_engine
    hits = engine.search("clock cell catalysts gene", mode="dense", top_k=50, filters=["reviewed=true"])
    assert _doc_ids(hits) == {"d1", "d3"}
    assert all(h.payload["reviewed"] is True for h in hits)  # the stored value stays a boolean
    assert "_bool" not in hits[0].payload
    rest = engine.search("clock cell catalysts gene", mode="bm25", top_k=50, filters=["reviewed!=true"])
    assert not _doc_ids(rest) & {"d1", "d3"}


def test_page_range_filter_selects_pages(filter_engine: Any) -> None:
    engine, pdf_id = filter_engine
    hits = engine.search("clock", mode="dense", top_k=50, filters=["page>=2"])
    assert {h.page for h in hits} == {2, 3}
    hits = engine.search("clock", mode="dense", top_k=50, filters=["page<2"])
    assert {h.page for h in hits} == {1}
    hits = engine.search("clock", mode="dense", top_k=50, filters=["page>=2", "page<=2"])
    assert {h.page for h in hits} == {2} and all(h.doc_id == pdf_id for h in hits)


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_filter_is_applied_inside_the_search(filter_engine: Any, mode: str) -> None:
    """top_k=1 with a filter selecting a poor match still returns it: no post-filtering of a top-k."""
    engine, _ = filter_engine
    query = "pendulum clock gene"
    unfiltered = engine.search(query, mode=mode, top_k=1)
    assert unfiltered and unfiltered[0].doc_id != "d4"
    hits = engine.search(query, mode=mode, top_k=1, filters=["category=biology", "year>2020"])
    assert [h.doc_id for h in hits] == ["d4"]


def test_ingested_at_range(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"_id": "early", "text": "Early document about river boats."}])
    write_jsonl(tmp_path / "b.jsonl", [{"_id": "late", "text": "Late document about river bridges."}])
    engine = make_engine()
    engine.ingest([tmp_path / "a.jsonl"])
    time.sleep(0.05)
    cut = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    engine.ingest([tmp_path / "b.jsonl"])
    assert _doc_ids(engine.search("river", top_k=10, filters=[f"ingested_at>={cut}"])) == {"late"}
    assert _doc_ids(engine.search("river", top_k=10, filters=[f"ingested_at<{cut}"])) == {"early"}
    day = cut[:10]
    assert _doc_ids(engine.search("river", top_k=10, filters=[f"ingested_at>={day}"])) == {"early", "late"}
    assert engine.search("river", top_k=10, filters=["ingested_at>=2999-01-01"]) == []


@pytest.mark.parametrize(
    "bad",
    [
        ["year"],
        ["=3"],
        ["year>="],
        ["year="],
        ["year>abc"],
        ["flag>true"],
        ["year>>3"],
        ["published>2020-13-45"],
        ["category=biology", "nonsense"],
    ],
)
def test_invalid_filter_raises(filter_engine: Any, bad: list[str]) -> None:
    engine, _ = filter_engine
    with pytest.raises(InvalidFilter):
        engine.search("clock", filters=bad)


# -- search modes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mode_engine(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Any:
    from ragline.config import load_settings

    root = tmp_path_factory.mktemp("modes")
    files = write_corpus(root / "docs")
    engine = Engine(load_settings(data_dir=root / "data"), embedder=embedder)
    engine.ingest([root / "docs"])
    yield engine, {k: doc_id(p) for k, p in files.items()}
    engine.close()


def test_bm25_ranks_rare_keyword_first(mode_engine: tuple[Engine, dict[str, str]]) -> None:
    engine, ids = mode_engine
    hits = engine.search("quibbleberry", mode="bm25", top_k=5)
    assert [h.doc_id for h in hits] == [ids["rare"]]  # no other document has the word
    assert hits[0].bm25_score is not None and hits[0].dense_score is None
    hybrid = engine.search("quibbleberry", mode="hybrid", top_k=5)
    assert hybrid[0].doc_id == ids["rare"]
    assert hybrid[0].bm25_score is not None and hybrid[0].dense_score is not None


def test_dense_finds_paraphrase_without_shared_words(mode_engine: tuple[Engine, dict[str, str]]) -> None:
    engine, ids = mode_engine
    query = "kitty dozing beside sunny glass"
    assert engine.search(query, mode="bm25", top_k=5) == []  # premise: no word in common with anything
    dense = engine.search(query, mode="dense", top_k=5)
    assert dense[0].doc_id == ids["cat"]
    assert dense[0].dense_score is not None and dense[0].bm25_score is None
    assert dense[0].score == pytest.approx(dense[0].dense_score)
    assert [h.score for h in dense] == sorted((h.score for h in dense), reverse=True)
    assert engine.search(query, mode="hybrid", top_k=5)[0].doc_id == ids["cat"]


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("how long should sourdough dough proof in the refrigerator", "bread"),
        ("telescopes measure the redshift of distant galaxies", "astronomy"),
        ("why do bond prices fall when interest rates rise", "finance"),
    ],
)
def test_every_mode_finds_the_topical_document(
    mode_engine: tuple[Engine, dict[str, str]], mode: str, query: str, key: str
) -> None:
    engine, ids = mode_engine
    hits = engine.search(query, mode=mode, top_k=3)
    assert hits[0].doc_id == ids[key]
    assert len(hits) <= 3
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.text for h in hits) and "text" not in hits[0].payload


def test_convex_fusion(mode_engine: tuple[Engine, dict[str, str]]) -> None:
    engine, ids = mode_engine
    query = "telescopes measure the redshift of distant galaxies"
    assert engine.search(query, mode="dense", top_k=1)[0].doc_id == ids["astronomy"]
    assert engine.search(query, mode="bm25", top_k=1)[0].doc_id == ids["astronomy"]
    rrf = engine.search(query, mode="hybrid", top_k=5, fusion_method="rrf")
    convex = engine.search(query, mode="hybrid", top_k=5, fusion_method="convex")
    assert convex[0].doc_id == ids["astronomy"]
    # top of both lists: alpha * 1 + (1 - alpha) * 1
    assert convex[0].score == pytest.approx(1.0)
    assert all(0.0 <= h.score <= 1.0 for h in convex)
    assert [h.score for h in convex] == sorted((h.score for h in convex), reverse=True)
    # rrf scores are sums of 1/(k + rank): a different scale
    assert rrf[0].score <= 2 / (engine.settings.retrieval.rrf_k + 1) + 1e-9 < 1.0
    with pytest.raises(ValueError):
        engine.search(query, fusion_method="borda")

    r = engine.settings.retrieval
    saved = (r.convex_alpha, r.fusion, r.prf_docs)
    try:
        # alpha=1 is pure dense order, alpha=0 pure bm25 order (over the fused candidates);
        # without pseudo-relevance feedback, which re-runs the dense side with a moved query
        r.prf_docs = 0
        r.convex_alpha = 1.0
        # (min-max scaling gives each list's last candidate 0, so compare the positive scores)
        fused = engine.search(query, mode="hybrid", top_k=3, fusion_method="convex")
        positive = [h.chunk_id for h in fused if h.score > 0]
        dense = engine.search(query, mode="dense", top_k=3)
        assert positive and positive == [h.chunk_id for h in dense][: len(positive)]
        r.convex_alpha = 0.0
        fused = engine.search(query, mode="hybrid", top_k=3, fusion_method="convex")
        positive = [h.chunk_id for h in fused if h.score > 0]
        bm25 = engine.search(query, mode="bm25", top_k=3)
        assert positive and positive == [h.chunk_id for h in bm25][: len(positive)]
        # chosen through the settings (retrieval.fusion) rather than per call
        r.convex_alpha, r.prf_docs = saved[0], saved[2]
        r.fusion = "rrf"
        assert engine.search(query, mode="hybrid", top_k=5, fusion_method="convex") == convex
        r.fusion = "convex"
        by_settings = engine.search(query, mode="hybrid", top_k=5)
        assert [(h.chunk_id, round(h.score, 6)) for h in by_settings] == [
            (h.chunk_id, round(h.score, 6)) for h in convex
        ]
    finally:
        r.convex_alpha, r.fusion, r.prf_docs = saved


def test_unknown_mode_raises(mode_engine: tuple[Engine, dict[str, str]]) -> None:
    engine, _ = mode_engine
    with pytest.raises(ValueError):
        engine.search("bread", mode="sparse")  # type: ignore[arg-type]


# -- the command line -----------------------------------------------------------------------


def _cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    env.update({"RAGLINE_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1"})
    proc = subprocess.run(
        [str(RAGLINE), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert proc.returncode == 0, f"ragline {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc


def test_cli_search_list_delete(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "docs")
    data = tmp_path / "cli-data"
    engine = make_engine(data_dir=data, chunking=SMALL_CHUNKS)
    engine.ingest([tmp_path / "docs"], collection="notes", metadata={"team": "red"})
    chunks = {r.doc_id: r.n_chunks for r in engine.documents(collection="notes")}
    engine.close()  # release the collection's write lock for the subprocesses

    listed = json.loads(_cli(data, "list", "--collection", "notes", "--json").stdout)
    assert {d["doc_id"] for d in listed} == set(chunks)
    assert all(d["n_chunks"] == chunks[d["doc_id"]] and d["metadata"] == {"team": "red"} for d in listed)

    out = _cli(data, "search", "quibbleberry", "--collection", "notes", "--mode", "bm25", "--json").stdout
    hits = json.loads(out)
    assert [h["doc_id"] for h in hits] == [doc_id(files["rare"])]
    assert "quibbleberry" in hits[0]["text"] and hits[0]["team"] == "red"

    hits = json.loads(
        _cli(data, "search", "sourdough bread", "--collection", "notes", "-k", "3", "--json").stdout
    )
    assert len(hits) == 3 and hits[0]["doc_id"] == doc_id(files["bread"])
    filtered = json.loads(
        _cli(data, "search", "bread", "--collection", "notes", "-f", "team=blue", "--json").stdout
    )
    assert filtered == []
    table = _cli(data, "search", "sourdough bread", "--collection", "notes").stdout
    assert "bread.md" in table

    bad = _cli(data, "search", "bread", "--collection", "notes", "-f", "year>abc", check=False)
    assert bad.returncode != 0 and "year>abc" in bad.stderr

    target = doc_id(files["bread"])
    deleted = _cli(data, "delete", target, "--collection", "notes")
    assert f"{chunks[target]} chunks" in deleted.stdout
    listed = json.loads(_cli(data, "list", "--collection", "notes", "--json").stdout)
    assert {d["doc_id"] for d in listed} == set(chunks) - {target}
    missing = _cli(data, "delete", target, "--collection", "notes", check=False)
    assert missing.returncode != 0 and "no document" in missing.stderr

    reopened = make_engine(data_dir=data, chunking=SMALL_CHUNKS)
    col = reopened.collection("notes")
    assert col.index.count() == sum(chunks.values()) - chunks[target]
    assert all(h.doc_id != target for h in reopened.search("sourdough", collection="notes", top_k=50))
    assert_consistent(reopened, "notes")


def test_candidate_search_without_payloads_then_payload_lookup(
    mode_engine: tuple[Engine, dict[str, str]],
) -> None:
    """Candidates can come bare (fields=()) and get their payloads, whole or in part, by id."""
    engine, ids = mode_engine
    index = engine.collection("default").index
    qvec = engine.embedder.embed_queries(["sourdough bread"])[0]
    dense, sparse = index.search(dense=qvec, text="sourdough bread", limit=5, fields=())
    assert dense and sparse
    assert all(h.payload == {} for h in dense + sparse)
    first = dense[0].id
    full = index.points([first, "00000000-0000-0000-0000-00000000dead"])
    assert list(full) == [first]  # unknown ids are left out, not errors
    assert full[first].payload["doc_id"] == ids["bread"] and full[first].payload["text"]
    assert full[first].dense is None  # vectors only when asked for
    only = index.points([first], fields=("doc_id",))
    assert only[first].payload == {"doc_id": ids["bread"]}
    # doc id and stored vector in one read: the vector is the one the dense search scored
    point = index.points([first], fields=("doc_id",), dense=True)[first]
    assert point.payload == {"doc_id": ids["bread"]} and point.dense is not None
    assert float(point.dense @ qvec) == pytest.approx(dense[0].score, abs=1e-4)
    assert index.points([first], fields=())[first].dense is None
    # exact re-scoring of a given id set: the same scores as the search, only those ids
    some = [h.id for h in dense[:3]] + ["00000000-0000-0000-0000-00000000dead"]
    rescored = index.rescore(qvec, some, limit=10)
    assert [h.id for h in rescored] == [h.id for h in dense[:3]]
    assert [h.score for h in rescored] == pytest.approx([h.score for h in dense[:3]], abs=1e-4)
    assert index.rescore(qvec, some, limit=1)[0].id == dense[0].id
    # the search result itself reads payloads only for the hits it returns
    hits = engine.search("sourdough bread", top_k=2)
    assert hits[0].doc_id == ids["bread"] and hits[0].text


def test_dbsf_normalization_is_chosen_by_the_settings(mode_engine: tuple[Engine, dict[str, str]]) -> None:
    """retrieval.normalization: dbsf scales each list by mean ± 3σ instead of min-max: the same
    documents come first, on another scale (the top no longer gets exactly 1.0)."""
    engine, ids = mode_engine
    query = "telescopes measure the redshift of distant galaxies"
    r = engine.settings.retrieval
    saved = (r.normalization, r.fusion)
    try:
        r.fusion = "convex"
        minmax = engine.search(query, mode="hybrid", top_k=5)
        r.normalization = "dbsf"
        dbsf = engine.search(query, mode="hybrid", top_k=5)
    finally:
        r.normalization, r.fusion = saved
    assert minmax[0].doc_id == dbsf[0].doc_id == ids["astronomy"]
    assert minmax[0].score == pytest.approx(1.0)
    assert dbsf[0].score != pytest.approx(1.0)
    assert [h.score for h in dbsf] == sorted((h.score for h in dbsf), reverse=True)
