"""The eval's treatment of corpus documents ingestion cannot or does not index.

- A document with no title and no text (Cranfield has two) is skipped and counted, not an error.
- Identical documents under different ids: ingestion keeps one; the eval scores the others like it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import write_jsonl
from ragline.errors import ConfigError
from ragline.eval.beir import load_beir
from ragline.eval.retrieval import duplicate_groups, expand_duplicates


def _dataset(root: Path, corpus: list[dict[str, str] | str]) -> Path:
    root.mkdir()
    write_jsonl(root / "corpus.jsonl", corpus)
    write_jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "shock waves"}])
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\t2\t1\n", encoding="utf-8")
    return root


def test_empty_documents_are_skipped_and_counted(tmp_path: Path) -> None:
    root = _dataset(
        tmp_path / "ds",
        [
            {"_id": "1", "title": "shock waves", "text": "shock waves in supersonic flow"},
            {"_id": "2", "title": "", "text": ""},
            {"_id": "3", "title": "boundary layers", "text": "laminar boundary layer transition"},
        ],
    )
    ds = load_beir(root)
    assert [d.doc_id for d in ds.iter_corpus()] == ["1", "3"]
    assert ds.empty_documents == 1
    assert ds.corpus_size() == 3


def test_malformed_lines_are_still_errors(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", [{"_id": "1", "text": "fine"}, "{not json"])
    with pytest.raises(ConfigError):
        list(load_beir(root).iter_corpus())


def test_identical_documents_share_scores(tmp_path: Path) -> None:
    root = _dataset(
        tmp_path / "ds",
        [
            {"_id": "a", "title": "", "text": "statin breast cancer survival"},
            {"_id": "b", "title": "", "text": "Statin  breast cancer survival"},  # same after normalising
            {"_id": "c", "title": "", "text": "vitamin d deficiency"},
            {"_id": "d", "title": "x", "text": "statin breast cancer survival"},  # different title
        ],
    )
    groups = duplicate_groups(load_beir(root).iter_corpus())
    assert groups == {"a": ["b"], "b": ["a"]}
    assert expand_duplicates({"a": 0.9, "c": 0.5}, groups) == {"a": 0.9, "b": 0.9, "c": 0.5}
    assert expand_duplicates({"c": 0.5}, groups) == {"c": 0.5}
    assert expand_duplicates({"a": 0.9}, {}) == {"a": 0.9}


def test_index_cache_key_follows_what_changes_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scratch index is reused only while the chunks it would hold are the same."""
    import ragline.eval.retrieval as retrieval
    from ragline.config import load_settings

    ds = load_beir(_dataset(tmp_path / "ds", [{"_id": "d1", "title": "T", "text": "some text"}]))
    base = load_settings(data_dir=tmp_path / "data")
    key = retrieval.index_key(ds, base, "emb")
    # query-time settings do not touch the index
    tuned = load_settings(data_dir=tmp_path / "data", retrieval={"convex_alpha": 0.3, "prf_mode": "search"})
    assert retrieval.index_key(ds, tuned, "emb") == key
    # chunking settings, the embedder and the chunker's own version do
    assert (
        retrieval.index_key(
            ds, load_settings(data_dir=tmp_path / "data", chunking={"chunk_tokens": 96}), "emb"
        )
        != key
    )
    for lexical in ({"lexical_context_tokens": 0}, {"lexical_title_weight": 2}):
        changed = load_settings(data_dir=tmp_path / "data", chunking=lexical)
        assert retrieval.index_key(ds, changed, "emb") != key
    assert retrieval.index_key(ds, base, "other-embedder") != key
    monkeypatch.setattr(retrieval, "CHUNKER_VERSION", retrieval.CHUNKER_VERSION + 1)
    assert retrieval.index_key(ds, base, "emb") != key
