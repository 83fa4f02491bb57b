"""Retrieval eval: metrics against ranx, the BEIR loader, and a tiny end-to-end eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ragline.config import Settings
from ragline.embed.onnx import OnnxEmbedder
from ragline.errors import ConfigError
from ragline.eval.beir import load_beir, load_qrels
from ragline.eval.metrics import evaluate, mrr_at_k, ndcg_at_k, rank, recall_at_k
from ragline.eval.retrieval import RetrievalEvaluator, evaluate_retrieval, roll_up
from ragline.types import Hit

METRICS = ("ndcg@10", "ndcg@5", "recall@10", "recall@100", "mrr@10")


def _random_case(
    seed: int, n_queries: int = 60, n_docs: int = 400, graded: bool = True
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    rng = np.random.default_rng(seed)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(n_queries):
        qid = f"q{q}"
        n_judged = int(rng.integers(1, 30))
        judged = rng.choice(n_docs, size=n_judged, replace=False)
        levels = rng.integers(0, 4 if graded else 2, size=n_judged)
        levels[0] = max(int(levels[0]), 1)  # at least one relevant document per query
        qrels[qid] = {f"d{d}": int(r) for d, r in zip(judged, levels, strict=True)}
        n_ret = int(rng.integers(1, 150))
        # bias the run towards judged documents so the metrics are not all ~0
        pool = np.concatenate([judged, rng.choice(n_docs, size=n_ret, replace=False)])
        docs = list(dict.fromkeys(f"d{d}" for d in pool))[:n_ret]
        scores = rng.permutation(len(docs)).astype(float) + rng.random(len(docs))  # distinct scores
        run[qid] = {d: float(s) for d, s in zip(docs, scores, strict=True)}
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("graded", [True, False])
def test_metrics_match_ranx(seed: int, graded: bool) -> None:
    ranx = pytest.importorskip("ranx")
    qrels, run = _random_case(seed, graded=graded)
    ours = evaluate(run, qrels, METRICS)
    ranx_run = ranx.Run(run)
    ranx.evaluate(ranx.Qrels(qrels), ranx_run, list(METRICS))  # per-query values land in ranx_run.scores
    for m in METRICS:
        theirs = np.array([float(ranx_run.scores[m][q]) for q in ours.query_ids])
        np.testing.assert_allclose(ours.per_query[m], theirs, rtol=1e-9, atol=1e-12, err_msg=m)
        assert ours.means[m] == pytest.approx(float(theirs.mean()), abs=1e-12)


def test_metrics_by_hand() -> None:
    rels = {"a": 2, "b": 1, "c": 0}
    ranked = ["x", "b", "a", "c"]
    dcg = 1 / np.log2(3) + 2 / np.log2(4)
    idcg = 2 / np.log2(2) + 1 / np.log2(3)
    assert ndcg_at_k(ranked, rels, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a", "b"], rels, 10) == pytest.approx(1.0)
    assert ndcg_at_k(ranked, rels, 1) == 0.0
    assert recall_at_k(ranked, rels, 2) == 0.5
    assert recall_at_k(ranked, rels, 10) == 1.0
    assert mrr_at_k(ranked, rels, 10) == 0.5
    assert mrr_at_k(["x", "c"], rels, 10) == 0.0
    assert ndcg_at_k(ranked, {"c": 0}, 10) == 0.0  # nothing relevant: 0, as trec_eval


def test_evaluate_counts_missing_queries_as_zero_and_ignores_unjudged() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}, "q3": {"b": 1.0}}
    ev = evaluate(run, qrels, ["ndcg@10", "recall@10"])
    assert ev.query_ids == ["q1", "q2"]
    assert ev.means == {"ndcg@10": 0.5, "recall@10": 0.5}


def test_rank_breaks_ties_like_trec_eval() -> None:
    assert rank({"a": 1.0, "b": 1.0, "c": 2.0}) == ["c", "b", "a"]


def test_roll_up_keeps_best_chunk_per_document() -> None:
    hits = [
        Hit("c1", 0.9, "", {"doc_id": "A"}),
        Hit("c2", 0.8, "", {"doc_id": "B"}),
        Hit("c3", 0.95, "", {"doc_id": "B"}),
        Hit("c4", 0.1, "", {"doc_id": "A"}),
    ]
    assert roll_up(hits) == {"A": 0.9, "B": 0.95}


# -- BEIR layout --------------------------------------------------------------------------

_TOPICS = [
    (
        "Photosynthesis",
        "Plants convert sunlight, water and carbon dioxide into glucose and oxygen in chloroplasts.",
    ),
    ("Volcanoes", "Magma rises through the crust and erupts as lava, ash and volcanic gases."),
    ("Honeybees", "Worker bees collect nectar and pollen and perform a waggle dance to share locations."),
    (
        "Black holes",
        "A black hole's gravity is so strong that not even light escapes past the event horizon.",
    ),
    (
        "Sourdough bread",
        "Wild yeast and lactobacilli in a starter leaven the dough and give it a sour taste.",
    ),
    ("Glaciers", "Compacted snow turns to ice that flows slowly downhill and carves U-shaped valleys."),
    ("Vaccines", "A vaccine trains the immune system to recognise a pathogen by presenting an antigen."),
    (
        "Chess openings",
        "The Sicilian Defence answers 1.e4 with c5 and leads to sharp asymmetrical positions.",
    ),
    ("Coral reefs", "Reef-building corals host symbiotic algae and bleach when sea temperatures rise."),
    ("Tides", "The Moon's gravitational pull on the oceans causes two high tides roughly every day."),
    ("Espresso", "Hot water is forced through finely ground coffee at nine bars of pressure."),
    (
        "Penguins",
        "Emperor penguins breed during the Antarctic winter and males incubate the egg on their feet.",
    ),
    ("Rust", "Iron oxidises in the presence of water and oxygen, forming flaky reddish iron oxide."),
    ("Bicycles", "A derailleur moves the chain between sprockets to change the gear ratio."),
    ("Tea", "Green and black tea come from the same plant; black tea leaves are fully oxidised."),
    (
        "Earthquakes",
        "Stress released along a fault produces seismic waves measured on the moment magnitude scale.",
    ),
    ("Wind turbines", "Rotor blades turn a generator; output grows with the cube of the wind speed."),
    ("Origami", "Paper is folded into cranes and other figures without cuts or glue."),
    ("Antibiotics", "Penicillin blocks bacterial cell wall synthesis; resistance spreads through misuse."),
    ("Saturn", "Saturn's rings are made of countless ice and rock particles orbiting the planet."),
]

_QUERIES = {
    "1": ("how do plants turn sunlight into glucose", {"d0": 2}),
    "2": ("lava and ash erupting from magma", {"d1": 2, "d15": 1}),
    "3": ("why can't light escape a black hole event horizon", {"d3": 1}),
    "4": ("waggle dance of worker bees", {"d2": 2}),
    "5": ("immune system antigen training", {"d6": 2, "d18": 1}),
    "6": ("espresso pressure finely ground coffee", {"d10": 1}),
    "7": ("emperor penguin males incubate the egg", {"d11": 2}),
    "8": ("ice particles in the rings of Saturn", {"d19": 1, "d5": 0}),
}


def write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for i, (title, text) in enumerate(_TOPICS):
            fh.write(json.dumps({"_id": f"d{i}", "title": title, "text": text, "metadata": {}}) + "\n")
    with (root / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid, (text, _) in _QUERIES.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
        fh.write(json.dumps({"_id": "train-1", "text": "a query of another split"}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{qid}\t{d}\t{r}" for qid, (_, rels) in _QUERIES.items() for d, r in rels.items()]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\ntrain-1\td4\t1\n", encoding="utf-8"
    )
    return root


def test_load_beir_keeps_only_judged_queries(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "tiny"), "test")
    assert ds.name == "tiny"
    assert list(ds.queries) == list(_QUERIES)
    assert ds.qrels["8"] == {"d19": 1, "d5": 0}
    assert ds.corpus_size() == 20
    docs = list(ds.iter_corpus())
    assert [d.doc_id for d in docs][:2] == ["d0", "d1"] and docs[0].title == "Photosynthesis"
    assert list(load_beir(tmp_path / "tiny", "train").queries) == ["train-1"]
    with pytest.raises(ConfigError, match="splits available"):
        load_beir(tmp_path / "tiny", "dev")


def test_load_qrels_rejects_malformed_lines(tmp_path: Path) -> None:
    p = tmp_path / "q.tsv"
    p.write_text("query-id\tcorpus-id\tscore\n1\td1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=":2:"):
        load_qrels(p)


# -- end to end ---------------------------------------------------------------------------


def test_eval_end_to_end_reuses_index(tmp_path: Path, settings: Settings, embedder: OnnxEmbedder) -> None:
    root = write_beir(tmp_path / "tiny")
    seen: list[tuple[str, int, int]] = []
    result = evaluate_retrieval(
        root, settings, embedder=embedder, chunk_depth=50, on_query=lambda m, i, n: seen.append((m, i, n))
    )
    assert [m.mode for m in result.modes] == ["dense", "bm25", "hybrid"]
    assert result.queries == 8 and result.index.corpus_documents == 20
    assert result.index.indexed_documents == 20 and not result.index.reused
    assert seen[-1] == ("hybrid", 8, 8) and len(seen) == 24
    for m in result.modes:
        assert set(m.metrics) == {"ndcg@10", "recall@10", "recall@100", "mrr@10"}
        assert m.ndcg_10 > 0.8, (m.mode, m.metrics)
        # dense ranks all 20 documents; BM25 only those sharing a term with the query
        assert m.recall_100 == 1.0 if m.mode != "bm25" else m.recall_100 >= 0.75
        assert 0 < m.latency_p50_ms <= m.latency_p95_ms
        assert set(m.per_query) == set(_QUERIES)
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["dataset"] == "tiny" and doc["results"][2]["mode"] == "hybrid"

    # the second run reuses the collection; another chunking builds a new one
    with RetrievalEvaluator(load_beir(root), settings, embedder=embedder) as ev:
        info = ev.prepare_index()
        assert info.reused and info.collection == result.index.collection
        assert info.chunks == result.index.chunks
    other = settings.model_copy(
        update={"chunking": settings.chunking.model_copy(update={"chunk_tokens": 100})}
    )
    with RetrievalEvaluator(load_beir(root), other, embedder=embedder) as ev:
        assert ev.prepare_index().collection != result.index.collection


def test_cli_eval_retrieval(tmp_path: Path) -> None:
    from ragline.cli import app

    root = write_beir(tmp_path / "tiny")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    out = tmp_path / "res.json"
    args = ["eval", "retrieval", "--dataset", str(root), "--mode", "bm25", "--config", str(cfg)]
    res = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "nDCG@10" in res.output and "bm25" in res.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert [r["mode"] for r in data["results"]] == ["bm25"]
    assert data["results"][0]["metrics"]["ndcg@10"] > 0.8
