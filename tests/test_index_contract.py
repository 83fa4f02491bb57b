"""The VectorIndex seam, proven by two implementations: every test runs on each backend.

edge: the embedded engine (EdgeIndex) in a temporary folder. qdrant: QdrantIndex through
qdrant-client's local mode in a temporary folder (the same client API a server serves; no Qdrant
server can be installed here). Both get the same points and must answer alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ragline.errors import ConfigError
from ragline.index.base import IndexPoint, VectorIndex
from ragline.index.edge import EdgeIndex
from ragline.index.filters import Condition, Filter, parse_filters
from ragline.index.qdrant import QdrantIndex, connect, drop_collection, release

DIM = 8
BACKENDS = ("edge", "qdrant")
Opener = Callable[..., VectorIndex]
#: Indexes a test closed itself (EdgeIndex.close is not idempotent): tmp_path -> indexes.
CLOSED: dict[str, list[VectorIndex]] = {}

WORDS = (
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "theta",
    "kappa",
    "lambda",
    "sigma",
    "omega",
    "river",
    "mountain",
    "forest",
    "ocean",
    "desert",
    "valley",
    "island",
    "glacier",
    "canyon",
)


def _id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def _vec(rng: np.random.Generator) -> npt.NDArray[np.float32]:
    v = rng.normal(size=DIM).astype(np.float32)
    out: npt.NDArray[np.float32] = v / np.linalg.norm(v)
    return out


def _points(n: int = 30, seed: int = 0) -> list[IndexPoint]:
    rng = np.random.default_rng(seed)
    pts = []
    for i in range(n):
        text = " ".join(WORDS[j] for j in rng.choice(len(WORDS), size=int(rng.integers(3, 9))))
        payload: dict[str, Any] = {
            "doc_id": f"doc{i % 7}",
            "source": f"s{i % 3}.md",
            "page": i % 5,
            "chunk_index": i,
            "score": round(i * 0.25, 2),
            "public": i % 2 == 0,
            "ingested_at": (datetime(2024, 1, 1, 12, tzinfo=UTC) + timedelta(days=i)).isoformat(),
            "lang": "en" if i % 4 else "de",
            "text": text,
        }
        pts.append(IndexPoint(_id(i), _vec(rng), text, payload))
    return pts


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_index(backend: str, tmp_path: Path) -> Iterator[Opener]:
    """Open (or reopen) the backend's index named ``name`` under tmp_path; all closed at the end."""
    opened: list[VectorIndex] = []
    closed = CLOSED.setdefault(str(tmp_path), [])

    def factory(name: str = "c", dim: int = DIM) -> VectorIndex:
        index: VectorIndex
        if backend == "edge":
            index = EdgeIndex(tmp_path / "edge" / name, dim)
        else:
            index = QdrantIndex(connect(None, str(tmp_path / "qdrant"), tmp_path), name, dim)
        opened.append(index)
        return index

    yield factory
    for index in opened:
        if index not in closed:
            index.close()


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorIndex]:
    """One index per backend holding ``_points()``, shared by the tests that only read."""
    tmp = tmp_path_factory.mktemp(f"loaded-{request.param}")
    index: VectorIndex
    if request.param == "edge":
        index = EdgeIndex(tmp / "edge", DIM)
    else:
        index = QdrantIndex(connect(None, str(tmp / "qdrant"), tmp), "c", DIM)
    _load(index, _points())
    yield index
    index.close()


def _load(index: VectorIndex, pts: list[IndexPoint]) -> None:
    for key in ("score", "public", "ingested_at", "lang"):  # as ingestion does, from a sample value
        index.ensure_payload_index(key, pts[0].payload[key])
    index.upsert(pts)
    index.flush()


def _loaded(open_index: Opener, points: list[IndexPoint] | None = None) -> VectorIndex:
    index = open_index()
    _load(index, points if points is not None else _points())
    return index


def _cosine_order(points: list[IndexPoint], q: npt.NDArray[np.float32]) -> list[tuple[str, float]]:
    scored = [(p.id, float(p.dense @ q)) for p in points]
    return sorted(scored, key=lambda s: -s[1])


# -- empty and basic ------------------------------------------------------------------------


def test_an_empty_index_answers_every_call(open_index: Opener) -> None:
    index = open_index()
    q = _vec(np.random.default_rng(1))
    assert index.count() == 0
    assert index.search(dense=q, text="alpha river", limit=10) == ([], [])
    assert index.search(dense=None, text=None, limit=10) == ([], [])
    assert index.existing([_id(1), _id(2)]) == set()
    assert index.existing([]) == set()
    assert index.points([_id(1)]) == {}
    assert index.rescore(q, [_id(1)], 5) == []
    index.delete([_id(1)])  # deleting what is not there is no error
    index.upsert([])
    index.flush()
    index.optimize()
    assert index.count() == 0


def test_upsert_count_existing_and_points(loaded: VectorIndex) -> None:
    pts = _points()
    index = loaded
    assert index.count() == len(pts)
    assert index.existing([_id(0), _id(5), _id(999)]) == {_id(0), _id(5)}
    got = index.points([_id(3), _id(999)], dense=True)
    assert set(got) == {_id(3)}
    assert got[_id(3)].payload == pts[3].payload
    assert got[_id(3)].dense is not None
    np.testing.assert_allclose(got[_id(3)].dense, pts[3].dense, atol=1e-5)
    only = index.points([_id(3)], fields=("doc_id", "page"))
    assert only[_id(3)].payload == {"doc_id": "doc3", "page": 3}
    assert only[_id(3)].dense is None
    assert index.points([_id(3)], fields=())[_id(3)].payload == {}


def test_dense_search_is_cosine_order_with_cosine_scores(loaded: VectorIndex) -> None:
    pts = _points()
    index = loaded
    q = _vec(np.random.default_rng(7))
    truth = _cosine_order(pts, q)[:10]
    for exact in (False, True):
        dense, bm25 = index.search(dense=q, text=None, limit=10, exact=exact, fields=())
        assert bm25 == []
        assert [h.id for h in dense] == [i for i, _ in truth]
        np.testing.assert_allclose([h.score for h in dense], [s for _, s in truth], atol=1e-5)
        assert all(h.payload == {} for h in dense)


def test_search_returns_the_payload_fields_asked_for(loaded: VectorIndex) -> None:
    pts = _points()
    index = loaded
    q = pts[4].dense
    dense, bm25 = index.search(dense=q, text=pts[4].lexical_text, limit=3, fields=("doc_id",))
    assert dense[0].id == _id(4) and dense[0].payload == {"doc_id": "doc4"}
    assert bm25 and all(set(h.payload) == {"doc_id"} for h in bm25)
    whole, _ = index.search(dense=q, text=None, limit=1)
    assert whole[0].payload == pts[4].payload


def test_rescore_scores_only_the_ids_given_exactly(loaded: VectorIndex) -> None:
    pts = _points()
    index = loaded
    q = _vec(np.random.default_rng(3))
    ids = [_id(i) for i in (2, 9, 11, 17, 25)] + [_id(999)]
    truth = _cosine_order([p for p in pts if p.id in ids], q)
    hits = index.rescore(q, ids, 3)
    assert [h.id for h in hits] == [i for i, _ in truth[:3]]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in truth[:3]], atol=1e-5)
    assert index.rescore(q, ids, 0) == [] and index.rescore(q, [], 3) == []


# -- BM25 ---------------------------------------------------------------------------------


def test_bm25_finds_the_terms_and_ranks_rarer_terms_higher(open_index: Opener) -> None:
    rare = IndexPoint(_id(100), _vec(np.random.default_rng(5)), "zebra crossing near the river", {"k": 1})
    common = [
        IndexPoint(_id(101 + i), _vec(np.random.default_rng(6 + i)), "river bank by the river", {"k": 2})
        for i in range(5)
    ]
    index = open_index()
    index.upsert([rare, *common])
    _, hits = index.search(dense=None, text="zebras river", limit=10)  # stemmed: zebras -> zebra
    assert hits[0].id == _id(100)  # the one with the rare term, despite fewer "river"s
    assert {h.id for h in hits} == {_id(100), *(p.id for p in common)}
    _, none = index.search(dense=None, text="unrelated words entirely", limit=10)
    assert none == []
    _, stop = index.search(dense=None, text="the", limit=10)  # a stop word alone: no query
    assert stop == []


def test_bm25_ranking_and_scores_agree_across_backends(tmp_path: Path) -> None:
    """The same encoder and the same IDF formula: the same scores, to float precision.

    After deletes, the matches stay the same but the scores may not: the engine (edge, and a Qdrant
    server, which runs the same engine) counts a deleted point in IDF until its segment is
    vacuumed; local mode counts live points only (qdrant-client says so in local_collection.py).
    """
    pts = _points(60, seed=4)
    edge = EdgeIndex(tmp_path / "edge", DIM)
    qdrant = QdrantIndex(connect(None, ":memory:", tmp_path), f"agree-{uuid.uuid4().hex}", DIM)

    def both(query: str) -> tuple[dict[str, float], dict[str, float]]:
        _, a = edge.search(dense=None, text=query, limit=len(pts), fields=())
        _, b = qdrant.search(dense=None, text=query, limit=len(pts), fields=())
        return {h.id: h.score for h in a}, {h.id: h.score for h in b}

    rng = np.random.default_rng(9)
    queries = [" ".join(WORDS[j] for j in rng.choice(len(WORDS), size=3)) for _ in range(20)]
    try:
        for index in (edge, qdrant):
            index.upsert(pts)
        for query in queries:
            sa, sb = both(query)
            assert sa and sa.keys() == sb.keys(), query
            for k in sa:
                assert sb[k] == pytest.approx(sa[k], rel=1e-5), query
            top = sorted(sa, key=lambda k: -sa[k])[:5]
            assert sorted(sb, key=lambda k: -sb[k])[:5] == top or len({sa[k] for k in top}) < 5, query
        for index in (edge, qdrant):
            index.delete([_id(7), _id(8)])
        for query in queries:
            sa, sb = both(query)
            assert sa.keys() == sb.keys(), query
    finally:
        edge.close()
        qdrant.close()


# -- writes ----------------------------------------------------------------------------------


def test_reupsert_replaces_vector_text_and_payload(open_index: Opener) -> None:
    pts = _points()
    index = _loaded(open_index, pts)
    new_vec = _vec(np.random.default_rng(42))
    index.upsert([IndexPoint(_id(0), new_vec, "quasar nebula", {"doc_id": "new", "page": 99})])
    assert index.count() == len(pts)
    got = index.points([_id(0)], dense=True)[_id(0)]
    assert got.payload == {"doc_id": "new", "page": 99}
    assert got.dense is not None
    np.testing.assert_allclose(got.dense, new_vec, atol=1e-5)
    _, hits = index.search(dense=None, text="quasar", limit=5)
    assert [h.id for h in hits] == [_id(0)]
    old_terms = set(pts[0].lexical_text.split()) - {w for p in pts[1:] for w in p.lexical_text.split()}
    for term in old_terms:  # a term only the old text had finds nothing now
        assert index.search(dense=None, text=term, limit=5)[1] == []
    assert index.search(dense=None, text=None, limit=5, flt=parse_filters(["doc_id=new"])) == ([], [])
    dense, _ = index.search(dense=new_vec, text=None, limit=1, flt=parse_filters(["doc_id=new"]))
    assert [h.id for h in dense] == [_id(0)]


def test_delete_removes_points_from_every_read(open_index: Opener) -> None:
    pts = _points()
    index = _loaded(open_index, pts)
    gone = [_id(1), _id(2), _id(3)]
    index.delete(gone)
    index.flush()
    assert index.count() == len(pts) - 3
    assert index.existing([*gone, _id(4)]) == {_id(4)}
    assert index.points(gone) == {}
    assert index.rescore(pts[1].dense, gone, 5) == []
    dense, bm25 = index.search(dense=pts[1].dense, text=pts[1].lexical_text, limit=len(pts))
    assert not {h.id for h in dense + bm25} & set(gone)
    assert len(dense) == len(pts) - 3


def test_points_persist_across_close_and_reopen(open_index: Opener, tmp_path: Path) -> None:
    pts = _points()
    index = _loaded(open_index, pts)
    q = pts[6].dense
    before = index.search(dense=q, text=pts[6].lexical_text, limit=5, fields=())
    index.close()
    CLOSED[str(tmp_path)].append(index)
    again = open_index()
    assert again.count() == len(pts)
    after = again.search(dense=q, text=pts[6].lexical_text, limit=5, fields=())
    assert [[h.id for h in r] for r in after] == [[h.id for h in r] for r in before]


def test_collections_are_separate(open_index: Opener) -> None:
    a = open_index("a")
    b = open_index("b")
    a.upsert(_points(5))
    assert a.count() == 5 and b.count() == 0
    assert b.search(dense=_points(1)[0].dense, text="alpha", limit=5) == ([], [])


# -- filters ---------------------------------------------------------------------------------

Pred = Callable[[dict[str, Any]], bool]


def _at(day: int) -> datetime:
    return datetime(2024, 1, day, 12, tzinfo=UTC)


def _when(p: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(p["ingested_at"])


FILTERS: list[tuple[str, Filter, Pred]] = [
    ("eq str", parse_filters(["doc_id=doc3"]), lambda p: p["doc_id"] == "doc3"),
    ("eq int", parse_filters(["page=2"]), lambda p: p["page"] == 2),
    ("eq float", parse_filters(["score=1.5"]), lambda p: p["score"] == 1.5),
    ("eq bool true", parse_filters(["public=true"]), lambda p: p["public"] is True),
    ("eq bool false", parse_filters(["public=false"]), lambda p: p["public"] is False),
    ("in str", parse_filters(["source=s0.md|s2.md"]), lambda p: p["source"] in ("s0.md", "s2.md")),
    ("in int", parse_filters(["page=1|3"]), lambda p: p["page"] in (1, 3)),
    ("in floats", Filter(must=[Condition("score", "in", (0.5, 1.75))]), lambda p: p["score"] in (0.5, 1.75)),
    ("in mixed", Filter(must=[Condition("page", "in", (1, "x"))]), lambda p: p["page"] == 1),
    ("in bools", Filter(must=[Condition("public", "in", (True,))]), lambda p: p["public"] is True),
    ("not eq", parse_filters(["lang!=en"]), lambda p: p["lang"] != "en"),
    ("not in", parse_filters(["page!=0|4"]), lambda p: p["page"] not in (0, 4)),
    ("gt", parse_filters(["score>3"]), lambda p: p["score"] > 3),
    ("gte", parse_filters(["score>=3"]), lambda p: p["score"] >= 3),
    ("lt", parse_filters(["chunk_index<4"]), lambda p: p["chunk_index"] < 4),
    ("lte float", parse_filters(["score<=1.25"]), lambda p: p["score"] <= 1.25),
    ("date gte", parse_filters(["ingested_at>=2024-01-20"]), lambda p: _when(p) >= _at(20).replace(hour=0)),
    ("date lt", parse_filters(["ingested_at<2024-01-05"]), lambda p: _when(p) < _at(5).replace(hour=0)),
    (
        "datetime with zone",
        parse_filters(["ingested_at>2024-01-10T12:00:00+00:00"]),
        lambda p: _when(p) > _at(10),
    ),
    (
        "range and eq together",
        parse_filters(["page=1", "ingested_at<=2024-01-25", "public=false"]),
        lambda p: p["page"] == 1 and _when(p) <= _at(25).replace(hour=0) and p["public"] is False,
    ),
    ("nothing matches", parse_filters(["doc_id=nope"]), lambda p: False),
]


@pytest.mark.parametrize(("flt", "pred"), [(f, p) for _, f, p in FILTERS], ids=[n for n, _, _ in FILTERS])
def test_filters_run_inside_the_search(loaded: VectorIndex, flt: Filter, pred: Pred) -> None:
    pts = _points()
    index = loaded
    want = {p.id for p in pts if pred(p.payload)}
    q = _vec(np.random.default_rng(11))
    dense, _ = index.search(dense=q, text=None, limit=len(pts), flt=flt, fields=())
    assert {h.id for h in dense} == want  # inside the search: every match, however far from q
    truth = [i for i, _ in _cosine_order([p for p in pts if p.id in want], q)]
    assert [h.id for h in dense] == truth
    top, _ = index.search(dense=q, text=None, limit=2, flt=flt, fields=())
    assert [h.id for h in top] == truth[:2]  # filtered before the limit, not after
    text = " ".join(WORDS)
    _, bm25 = index.search(dense=None, text=text, limit=len(pts), flt=flt, fields=())
    assert {h.id for h in bm25} == want


# -- backend-specific -------------------------------------------------------------------------


def test_qdrant_refuses_a_collection_of_another_dimension(tmp_path: Path) -> None:
    conn = connect(None, str(tmp_path / "q"), tmp_path)
    QdrantIndex(conn, "c", DIM, owns_connection=False).close()
    with pytest.raises(ConfigError, match="dim 8, not 16"):
        QdrantIndex(conn, "c", 16, owns_connection=False)
    assert drop_collection(conn, "c") and not drop_collection(conn, "c")
    release(conn)
