"""Small-to-big answers (``answer.source_window``): search ranks small chunks, the answer is
built from, and cites, each chunk's window (the chunk plus ``chunking.lexical_context_tokens`` of
its section on either side, stored at ingestion). Real embedder, real engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import VOCAB, write_text
from ragline import Engine
from ragline.answer.prompt import source_sentences
from ragline.embed.onnx import OnnxEmbedder
from ragline.ingest import pipeline
from ragline.types import Hit


def _words(n: int) -> list[str]:
    return [f"{VOCAB[i % len(VOCAB)]}{i}" for i in range(n)]


def _sentences(words: list[str], per: int = 8) -> str:
    return " ".join(" ".join(words[i : i + per]).capitalize() + "." for i in range(0, len(words), per))


def _engine(make_engine: Callable[..., Engine], tmp_path: Path, context: int, **answer: object) -> Engine:
    return make_engine(
        data_dir=tmp_path / f"data{context}",
        chunking={"chunk_tokens": 64, "overlap_tokens": 0, "lexical_context_tokens": context},
        answer=answer,
    )


def test_each_hit_carries_its_window_around_the_chunk(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    words = _words(400)
    doc = write_text(tmp_path / "doc.txt", " ".join(words))
    eng = _engine(make_engine, tmp_path, 32)
    eng.ingest([doc])
    hits = sorted(eng.search(words[0], top_k=100, mode="dense"), key=lambda h: h.payload["chunk_index"])
    assert len(hits) >= 4
    for h in hits:
        # the window is a contiguous run of the document's words that holds the chunk, whole words
        window = h.window.split()
        start = words.index(window[0])
        assert window == words[start : start + len(window)]
        assert h.text in h.window and len(h.window) > len(h.text)
    # the first chunk widens only forwards, the last only backwards, the middle ones both ways
    assert hits[0].window.startswith(hits[0].text)
    assert hits[-1].window.endswith(hits[-1].text)
    middle = hits[len(hits) // 2]
    assert not middle.window.startswith(middle.text) and not middle.window.endswith(middle.text)


def test_without_lexical_context_the_window_is_the_chunk(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    doc = write_text(tmp_path / "doc.txt", " ".join(_words(300)))
    eng = _engine(make_engine, tmp_path, 0)
    eng.ingest([doc])
    for h in eng.search("river", top_k=10, mode="dense"):
        assert "window" not in h.payload and h.window == h.text


def test_extractive_answer_quotes_and_cites_the_windows(
    tmp_path: Path, make_engine: Callable[..., Engine], embedder: OnnxEmbedder
) -> None:
    words = _words(600)
    doc = write_text(tmp_path / "doc.txt", _sentences(words))
    question = " ".join(words[200:208])
    answers = {}
    for on in (True, False):
        eng = make_engine(
            data_dir=tmp_path / f"data-{on}",
            chunking={"chunk_tokens": 48, "overlap_tokens": 0, "lexical_context_tokens": 32},
            answer={"source_window": on, "min_relevance": -1.0, "top_k": 2},
        )
        eng.ingest([doc])
        answers[on] = eng.answer(question, mode="extractive")
    wide, narrow = answers[True], answers[False]
    assert wide.found and narrow.found
    # same chunks, ranked the same: the window only changes what is shown
    assert [s.chunk_id for s in wide.sources] == [s.chunk_id for s in narrow.sources]
    for w, n in zip(wide.sources, narrow.sources, strict=True):
        assert w.text == n.window and n.text in w.text and len(w.text) > len(n.text)
    # every quoted sentence comes from the source its citation names, as the answer shows it
    for answer in (wide, narrow):
        for c in answer.citations:
            assert c.snippet == answer.sources[c.number - 1].text[:240]
        quoted = []
        for part in answer.text.split("] "):
            sentence, _, number = part.rstrip("]").rpartition(" [")
            assert sentence.strip() in answer.sources[int(number) - 1].text
            quoted.append(sentence.strip())
        # overlapping windows hold the same sentences: none is quoted twice
        assert len(quoted) == len(set(quoted))
        assert len(quoted) == 3 or answer is narrow  # the windows hold more than two chunks


def test_a_sentence_shared_by_overlapping_sources_is_taken_once() -> None:
    a = "The river rises in the mountains. It flows west to the sea. Boats carry grain."
    b = "It flows west to the sea. Boats carry grain. The delta is wide and flat."
    c = "The river rises in the mountains. It flows west to"  # a window cut mid-sentence
    hits = [Hit(f"c{i}", 1.0, t, {}) for i, t in enumerate((a, b, c))]
    assert [(i, s) for i, _, s in source_sentences(hits)] == [
        (0, "The river rises in the mountains."),
        (0, "It flows west to the sea."),
        (1, "The delta is wide and flat."),
    ]
    # sentences under the minimum length are not candidates at all
    assert [s for _, _, s in source_sentences(hits, min_words=3)][2] == "Boats carry grain."


def test_reingest_after_a_payload_change_rewrites_unchanged_documents(
    tmp_path: Path, make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document ingested before chunks carried their window gets it on the next ingest, though
    its text did not change (the payload version is part of every document's version)."""
    doc = write_text(tmp_path / "doc.txt", " ".join(_words(300)))
    eng = _engine(make_engine, tmp_path, 32)
    first = eng.ingest([doc])
    eng.close()
    assert first.added == 1
    eng = _engine(make_engine, tmp_path, 32)
    again = eng.ingest([doc])
    eng.close()
    assert again.unchanged == 1 and again.updated == 0
    monkeypatch.setattr(pipeline, "PAYLOAD_VERSION", pipeline.PAYLOAD_VERSION + 1)
    eng = _engine(make_engine, tmp_path, 32)
    upgraded = eng.ingest([doc])
    assert upgraded.updated == 1 and upgraded.unchanged == 0
    hits = eng.search("river", top_k=100, mode="dense")
    assert len(hits) == first.chunks  # the old version's chunks are gone, not doubled
