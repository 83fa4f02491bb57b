"""`ragline eval answers`: SQuAD EM/F1, citation support, the dataset loader, and end-to-end runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragline.answer.llm import LlamaCppLLM
from ragline.config import Settings
from ragline.embed.onnx import OnnxEmbedder
from ragline.errors import ConfigError
from ragline.eval.answers import (
    check_citations,
    cited_sentences,
    contains_answer,
    content_words,
    evaluate_answers,
    exact_match,
    f1_score,
    load_answers,
    load_qa,
    normalize_answer,
    strip_markers,
    support,
)

# -- SQuAD scoring ------------------------------------------------------------------------


def test_normalize_answer_is_squads() -> None:
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("Theory") == "theory"  # articles only as whole words
    assert normalize_answer("U.S.-based") == "usbased"  # punctuation removed, not replaced


def test_exact_match_and_f1() -> None:
    assert exact_match("the Denver Broncos.", ["Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    assert exact_match("Carolina", ["Denver Broncos", "carolina"]) == 1.0  # max over references
    # prediction "cat sat" vs reference "cat sat on mat": P = 2/2, R = 2/4 -> F1 = 2/3
    assert f1_score("The cat sat", ["cat sat on the mat"]) == pytest.approx(2 / 3)
    assert f1_score("cat cat", ["cat"]) == pytest.approx(2 * 0.5 * 1 / 1.5)  # multisets
    assert f1_score("nothing shared", ["cat"]) == 0.0
    assert f1_score("dog", ["cat", "a dog"]) == 1.0
    assert f1_score("", ["cat"]) == 0.0


def test_contains_answer_matches_whole_tokens() -> None:
    assert contains_answer("The Broncos beat the Panthers 24-10 in Santa Clara.", ["Santa Clara"]) == 1.0
    assert contains_answer("They scored 3080 points.", ["308"]) == 0.0
    assert contains_answer("They scored 308 points.", ["308"]) == 1.0
    assert contains_answer("anything", [""]) == 0.0


def test_strip_markers() -> None:
    assert (
        strip_markers("Paris is the capital [1]. It is large [2, 3].")
        == "Paris is the capital . It is large ."
    )
    assert exact_match(strip_markers("Paris [1]"), ["Paris"]) == 1.0


# -- citation support -----------------------------------------------------------------------


def test_cited_sentences_moves_leading_markers_back() -> None:
    generated = "Bees dance to share food locations [1]. Workers collect nectar [2, 3]."
    assert cited_sentences(generated) == [
        ("Bees dance to share food locations [1].", [1]),
        ("Workers collect nectar [2, 3].", [2, 3]),
    ]
    extractive = "Bees dance to share food locations. [1] Workers collect nectar. [2] An uncited one."
    assert cited_sentences(extractive) == [
        ("Bees dance to share food locations.", [1]),
        ("Workers collect nectar.", [2]),
        ("An uncited one.", []),
    ]
    markers_first = "[1] Bees dance to share food locations. [2] Workers collect nectar."
    assert cited_sentences(markers_first) == [
        ("Bees dance to share food locations.", [1]),
        ("Workers collect nectar.", [2]),
    ]
    # a marker ends a claim even without a full stop (extractive answers quote fragments)
    assert cited_sentences("Worker bees collect nectar [1] Emperor penguins breed in winter. [2]") == [
        ("Worker bees collect nectar [1]", [1]),
        ("Emperor penguins breed in winter.", [2]),
    ]


def test_content_words_and_support() -> None:
    assert content_words("The worker bees collect the nectar [1].") == {"worker", "bee", "collect", "nectar"}
    chunk = "Worker bees collect nectar and pollen and perform a waggle dance."
    assert support("Worker bees collect nectar [1].", chunk) == 1.0
    assert support("Bees collect honey from volcanoes.", chunk) == pytest.approx(2 / 4)
    assert support("It is what it is.", chunk) is None  # nothing but stop words


def test_check_citations_on_crafted_answers() -> None:
    sources = [
        "Photosynthesis\nPlants convert sunlight, water and carbon dioxide into glucose in chloroplasts.",
        "Volcanoes\nMagma rises through the crust and erupts as lava and ash.",
    ]
    text = (
        "Plants turn sunlight and water into glucose [1]. "  # supported by 1
        "Magma erupts as lava [1, 2]. "  # not by 1, yes by 2
        "Penguins incubate eggs on their feet [2]. "  # unsupported
        "An uncited claim about glaciers. "
        "Quoted text keeps its own reference numbers [52]."  # no source 52: not a citation
    )
    stats = check_citations(text, sources)
    assert stats.sentences == 5 and stats.cited_sentences == 3
    verdicts = [(c.number, c.supported) for c in stats.checks]
    assert verdicts == [(1, True), (1, False), (2, True), (2, False)]
    assert stats.judged == 4 and stats.supported == 2
    # the threshold decides: plant, convert, sunlight are in source 1, sugar is not (3 of 4)
    strict = check_citations("Plants convert sunlight into sugar [1].", sources, threshold=1.0)
    assert [c.supported for c in strict.checks] == [False]  # "sugar" is not in the source
    lenient = check_citations("Plants convert sunlight into sugar [1].", sources, threshold=0.7)
    assert [c.supported for c in lenient.checks] == [True]


# -- the dataset ------------------------------------------------------------------------------

_PASSAGES = [
    (
        "Honeybees",
        "Worker bees collect nectar and pollen. They perform a waggle dance to show where flowers are.",
    ),
    (
        "Volcanoes",
        "Magma rises through the crust and erupts as lava. Mount Etna is the most active volcano in Europe.",
    ),
    (
        "Espresso",
        "Hot water is forced through finely ground coffee. The usual brewing pressure is nine bars.",
    ),
    (
        "Penguins",
        "Emperor penguins breed during the Antarctic winter. The males incubate the egg on their feet.",
    ),
    ("Saturn", "Saturn's rings are made of ice and rock particles. Saturn has 146 known moons."),
    (
        "Glaciers",
        "Compacted snow turns into glacial ice. Glaciers carve U-shaped valleys as they flow downhill.",
    ),
    (
        "Tides",
        "The gravitational pull of the Moon causes the tides. Most coasts see two high tides every day.",
    ),
]

_QA = {
    "q1": ("How do honeybees share the location of flowers?", ["a waggle dance"], "d0"),
    "q2": ("Which is the most active volcano in Europe?", ["Mount Etna"], "d1"),
    "q3": ("What brewing pressure does espresso use?", ["nine bars", "9 bars"], "d2"),
    "q4": ("Which emperor penguins incubate the egg on their feet?", ["the males"], "d3"),
    "q5": ("How many known moons does Saturn have?", ["146"], "d4"),
}


def write_qa(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for i, (title, text) in enumerate(_PASSAGES):
            fh.write(json.dumps({"_id": f"d{i}", "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid, (text, _, _) in _QA.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, (_, _, d) in _QA.items()]
    (root / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with (root / "answers.jsonl").open("w", encoding="utf-8") as fh:
        for qid, (_, answers, ctx) in _QA.items():
            fh.write(
                json.dumps({"_id": qid, "answers": answers, "answer_starts": [0], "context_id": ctx}) + "\n"
            )
    return root


def test_load_qa_and_limit(tmp_path: Path) -> None:
    ds = load_qa(write_qa(tmp_path / "qa"))
    assert ds.name == "qa" and list(ds.references) == list(_QA)
    assert ds.references["q3"].answers == ["nine bars", "9 bars"] and ds.references["q3"].context_id == "d2"
    assert ds.questions() == list(_QA)
    assert ds.questions(2) == ["q1", "q3"]  # evenly spaced
    assert ds.questions(10) == list(_QA)
    (tmp_path / "qa" / "answers.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"answers\.jsonl"):
        load_qa(tmp_path / "qa")


def test_load_answers_rejects_malformed_lines(tmp_path: Path) -> None:
    p = tmp_path / "answers.jsonl"
    p.write_text('{"_id": "1", "answers": ["x"]}\n{"_id": "2", "answers": []}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=":2:"):
        load_answers(p)
    p.write_text('{"_id": "1", "answers": ["x"]}\nnot json\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=":2: invalid JSON"):
        load_answers(p)


# -- end to end -------------------------------------------------------------------------------


def test_eval_answers_extractive_end_to_end(
    tmp_path: Path, settings: Settings, embedder: OnnxEmbedder
) -> None:
    root = write_qa(tmp_path / "qa")
    seen: list[tuple[int, int]] = []
    result = evaluate_answers(
        root, settings, mode="extractive", embedder=embedder, on_question=lambda i, n: seen.append((i, n))
    )
    assert seen[-1] == (5, 5) and len(result.questions) == 5
    assert result.index.indexed_documents == len(_PASSAGES) and not result.index.reused
    m = result.metrics()
    assert m["not_found"] == 0.0
    assert m["gold_in_sources"] == 1.0
    # extractive answers are verbatim sentences of the chunks they cite
    assert m["citation_precision"] == 1.0 and m["citations_judged"] >= 5
    assert m["cited_sentences"] == 1.0
    assert m["contains"] >= 0.8, [q.answer for q in result.questions]
    assert m["exact_match"] == 0.0  # whole sentences never equal a short span
    assert 0.0 < m["f1"] < 1.0
    assert m["latency_ms"]["n"] == 5 and 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p95"]
    assert m["ttft_ms"]["n"] == 0  # extractive answers stream nothing
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["mode"] == "extractive" and len(doc["per_question"]) == 5
    assert doc["per_question"][0]["references"] == ["a waggle dance"]
    assert "llm" not in doc["settings"]


def test_eval_answers_generate_with_the_real_llm(
    tmp_path: Path, settings: Settings, embedder: OnnxEmbedder, llm: LlamaCppLLM
) -> None:
    root = write_qa(tmp_path / "qa")
    result = evaluate_answers(root, settings, mode="generate", limit=1, embedder=embedder, llm=llm)
    (q,) = result.questions
    assert q.id == "q1" and q.gold_in_sources
    # the model was called and streamed: the first token came before the answer was complete
    assert q.ttft_ms is not None and 0 < q.ttft_ms <= q.latency_ms
    assert q.answer.strip()
    if q.found:
        assert q.citations.sentences >= 1
    m = result.metrics()
    assert m["ttft_ms"]["n"] == 1 and m["latency_ms"]["n"] == 1
    assert result.to_dict()["settings"]["llm"]["name"] == llm.name


def test_cli_eval_answers(tmp_path: Path) -> None:
    from ragline.cli import app

    root = write_qa(tmp_path / "qa")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    out = tmp_path / "res.json"
    args = ["eval", "answers", "--dataset", str(root), "--mode", "extractive", "--limit", "2"]
    res = CliRunner().invoke(app, [*args, "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "citation precision" in res.output and "TTFT" in res.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["questions"] == 2 and [q["id"] for q in data["per_question"]] == ["q1", "q3"]
    assert data["metrics"]["citation_precision"] == 1.0
    bad = CliRunner().invoke(
        app, ["eval", "answers", "--dataset", str(root), "--mode", "nope", "--config", str(cfg)]
    )
    assert bad.exit_code != 0
