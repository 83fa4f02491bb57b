"""Ingestion end to end: real parsers, the real ONNX embedder and the real Qdrant edge index.

Covers the metadata every search hit carries for each format, exact and near-duplicate
detection, per-file failure reasons (the rest of the batch still ingests), and the CLI's
exit code and summary. Every fixture file is written by the test (see fixtures.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fixtures import (
    paragraphs,
    sentences,
    write_docx,
    write_encrypted_pdf,
    write_jsonl,
    write_junk,
    write_pdf,
    write_text,
)
from ragline import Engine
from ragline.types import CORE_FIELDS, Hit, IngestReport

RAGLINE = Path(sys.executable).parent / "ragline"

# -- helpers ------------------------------------------------------------------------------


def all_hits(engine: Engine, filters: list[str] | None = None) -> list[Hit]:
    """Every chunk of a (small) collection, as search hits."""
    return engine.search("document text", top_k=1000, mode="dense", filters=filters)


def hit_with(hits: list[Hit], needle: str) -> Hit:
    found = [h for h in hits if needle in h.text]
    assert found, f"no hit contains {needle!r}"
    return found[0]


def failures(report: IngestReport) -> dict[str, str]:
    return {f.path: f.reason for f in report.failed}


# -- a small corpus of every format ---------------------------------------------------------


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "docs"
    d.mkdir()
    paths = {
        "pdf": write_pdf(
            d / "report.pdf",
            [
                ["Quarterly report", "Revenue grew in the northern region."],
                ["Copper prices rose sharply this quarter."],
                ["The appendix lists every harbor station."],
            ],
            title="Q3 Report",
        ),
        "html": write_text(
            d / "handbook.html",
            "<html><head><title>Harbor Handbook</title><script>var hidden = 1;</script></head><body>"
            "<nav>NavMenu</nav><h1>Harbor Handbook</h1><p>Welcome aboard.</p>"
            "<h2>Mooring</h2><p>Boats moor at the north pier.</p></body></html>",
        ),
        "md": write_text(
            d / "guide.md",
            "# Field Guide\n\nWelcome to the guide.\n\n## Install\n\n```sh\n# a comment\nmake\n```\n\n"
            "### On Linux\n\nUse the package manager apt.\n",
        ),
        "txt": write_text(d / "meeting-notes.txt", "The committee approved the lantern budget."),
        "docx": write_docx(
            d / "manual.docx",
            [
                ("title", "Operations Manual"),
                ("h1", "Startup"),
                ("p", "Press the green button."),
                ("table", [["Step", "Action"], ["1", "Check the battery"]]),
                ("h2", "Cold start"),
                ("p", "Warm the engine first."),
            ],
        ),
        "jsonl": write_jsonl(
            d / "corpus.jsonl",
            [
                {
                    "_id": "d1",
                    "title": "Copper",
                    "text": "Copper is a soft metal.",
                    "year": 2020,
                    "lang": "en",
                },
                {
                    "_id": "d2",
                    "title": "Silver",
                    "text": "Silver conducts heat well.",
                    "metadata": {"lic": "cc"},
                },
            ],
        ),
    }
    # not ingested from a directory: unknown extension, hidden file
    write_text(d / "notes.xyz", "unknown format")
    write_text(d / ".hidden.md", "# Hidden\n\nnot for indexing")
    return paths


def test_every_format_is_searchable_with_its_metadata(
    make_engine: Callable[..., Engine], corpus: dict[str, Path]
) -> None:
    eng = make_engine()
    report = eng.ingest([corpus["pdf"].parent], metadata={"team": "docs", "year": 2024})
    assert report.failed == []
    assert report.added == 7  # five files + two JSONL lines; .xyz and hidden files are skipped
    assert report.duplicates == report.near_duplicates == 0
    hits = all_hits(eng)
    assert len(hits) == report.chunks
    assert {h.doc_id for h in hits} == {
        *(str(p.resolve()) for k, p in corpus.items() if k != "jsonl"),
        "d1",
        "d2",
    }

    for h in hits:
        for key in CORE_FIELDS:
            assert key in h.payload, f"{key} missing from {h.doc_id}"
        assert h.payload["team"] == "docs"
        assert len(h.payload["content_hash"]) == 64
        assert datetime.fromisoformat(h.payload["ingested_at"]).tzinfo is not None
        assert isinstance(h.payload["chunk_index"], int)
        assert "hidden" not in h.text and "NavMenu" not in h.text

    # PDF: one chunk per page here, each with its page number
    pdf = [h for h in hits if h.doc_id == str(corpus["pdf"].resolve())]
    assert sorted(h.page or 0 for h in pdf) == [1, 2, 3]
    assert hit_with(pdf, "Copper prices").page == 2
    assert hit_with(pdf, "harbor station").page == 3
    assert {h.title for h in pdf} == {"Q3 Report"}
    assert {h.payload["source"] for h in pdf} == {str(corpus["pdf"])}
    assert {h.payload["pages"] for h in pdf} == {3}
    assert sorted(h.payload["chunk_index"] for h in pdf) == [0, 1, 2]
    assert len({h.payload["content_hash"] for h in pdf}) == 1

    html = hit_with(hits, "north pier")
    assert (html.title, html.section, html.page) == ("Harbor Handbook", "Mooring", None)
    md = hit_with(hits, "package manager apt")
    assert (md.title, md.section) == ("Field Guide", "Install > On Linux")
    assert hit_with(hits, "# a comment").section == "Install"
    txt = hit_with(hits, "lantern budget")
    assert (txt.title, txt.section, txt.payload["source"]) == ("meeting-notes", "", str(corpus["txt"]))
    docx = hit_with(hits, "Warm the engine")
    assert (docx.title, docx.section) == ("Operations Manual", "Startup > Cold start")
    assert hit_with(hits, "Check the battery").section == "Startup"

    d1 = next(h for h in hits if h.doc_id == "d1")
    assert (d1.title, d1.payload["source"]) == ("Copper", f"{corpus['jsonl']}#L1")
    assert d1.payload["lang"] == "en"
    assert d1.payload["year"] == 2020  # the document's own field wins over --meta
    d2 = next(h for h in hits if h.doc_id == "d2")
    assert (d2.payload["lic"], d2.payload["year"], d2.payload["team"]) == ("cc", 2024, "docs")

    # user metadata is filterable
    assert {h.doc_id for h in all_hits(eng, filters=["year=2020"])} == {"d1"}
    assert {h.doc_id for h in all_hits(eng, filters=["page=2"])} == {str(corpus["pdf"].resolve())}
    assert len(all_hits(eng, filters=["team=docs"])) == len(hits)

    # the registry lists each document once, with its metadata
    docs = {d.doc_id: d for d in eng.documents()}
    assert len(docs) == 7
    assert docs["d1"].metadata["lang"] == "en" and docs["d1"].title == "Copper"

    # ingesting the same files again changes nothing
    again = eng.ingest([corpus["pdf"].parent], metadata={"team": "docs", "year": 2024})
    assert (again.added, again.updated, again.unchanged, again.chunks) == (0, 0, 7, 0)


# -- duplicates ---------------------------------------------------------------------------


def test_exact_duplicate_under_another_name_is_dropped(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    text = paragraphs(2, seed=1)
    a = write_text(tmp_path / "original.txt", text)
    b = write_text(tmp_path / "copy-of-original.txt", text)
    other = write_text(tmp_path / "other.txt", paragraphs(2, seed=2))
    eng = make_engine()
    report = eng.ingest([a, b, other])
    assert (report.added, report.duplicates, report.near_duplicates, report.failed) == (2, 1, 0, [])
    # the same content arriving later, under a third name and with other whitespace, is also a duplicate
    c = write_text(tmp_path / "third.txt", "  " + text.replace(". ", ".  ") + "\n\n")
    later = eng.ingest([c])
    assert (later.added, later.duplicates) == (0, 1)
    assert {d.doc_id for d in eng.documents()} == {str(a.resolve()), str(other.resolve())}


def _near_copy(text: str) -> str:
    """The same text with three words changed, far apart."""
    words = text.split(" ")
    for i in (len(words) // 5, len(words) // 2, 4 * len(words) // 5):
        words[i] = "zeppelin"
    return " ".join(words)


@pytest.mark.parametrize(("threshold", "dropped"), [(None, 1), (0.8, 1), (0.99, 0)])
def test_near_duplicate_threshold(
    tmp_path: Path, make_engine: Callable[..., Engine], threshold: float | None, dropped: int
) -> None:
    text = sentences(60, seed=7)  # about 650 words
    original = write_text(tmp_path / "long.txt", text)
    near = write_text(tmp_path / "long-edited.txt", _near_copy(text))
    overrides = {} if threshold is None else {"ingest": {"near_duplicate_threshold": threshold}}
    eng = make_engine(**overrides)
    report = eng.ingest([original, near])
    assert report.failed == [] and report.duplicates == 0
    assert report.near_duplicates == dropped
    assert report.added == 2 - dropped
    assert str(original.resolve()) in {d.doc_id for d in eng.documents()}  # the first one is kept


def test_near_duplicate_detection_can_be_turned_off(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    text = sentences(60, seed=7)
    files = [write_text(tmp_path / "a.txt", text), write_text(tmp_path / "b.txt", _near_copy(text))]
    report = make_engine(ingest={"near_duplicate_detection": False}).ingest(files)
    assert (report.added, report.near_duplicates) == (2, 0)


@pytest.mark.parametrize("threshold", [0.01, 1.0])
def test_any_valid_dedup_setting_works(
    tmp_path: Path, make_engine: Callable[..., Engine], threshold: float
) -> None:
    """The extremes of the settings' ranges (few permutations, threshold near 0 or 1) do not break ingest."""
    files = [write_text(tmp_path / f"{i}.txt", sentences(3, seed=i)) for i in range(2)]
    eng = make_engine(ingest={"near_duplicate_threshold": threshold, "minhash_permutations": 16})
    report = eng.ingest(files)
    assert report.failed == []
    assert report.added + report.near_duplicates == 2
    if threshold == 1.0:
        assert report.added == 2


def test_near_duplicate_of_an_earlier_ingest_is_dropped(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    text = sentences(60, seed=7)
    eng = make_engine()
    assert eng.ingest([write_text(tmp_path / "a.txt", text)]).added == 1
    later = eng.ingest([write_text(tmp_path / "b.txt", _near_copy(text))])
    assert (later.added, later.near_duplicates) == (0, 1)


def test_unrelated_and_merely_similar_documents_are_never_dropped(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    boilerplate = "This document is confidential. Do not share it outside the company. " * 3
    files = [write_text(tmp_path / f"doc{i}.txt", sentences(8, seed=100 + i)) for i in range(4)]
    # two documents that share a template paragraph but differ in their body
    files += [
        write_text(tmp_path / f"memo{i}.txt", boilerplate + "\n\n" + sentences(10, seed=200 + i))
        for i in range(2)
    ]
    # a document that shares half its text with another
    half = sentences(10, seed=300)
    files += [
        write_text(tmp_path / "half-a.txt", half + "\n\n" + sentences(10, seed=301)),
        write_text(tmp_path / "half-b.txt", half + "\n\n" + sentences(10, seed=302)),
    ]
    # very short documents
    files += [write_text(tmp_path / "yes.txt", "Yes."), write_text(tmp_path / "no.txt", "No.")]
    report = make_engine().ingest(files)
    assert report.failed == []
    assert (report.added, report.duplicates, report.near_duplicates) == (len(files), 0, 0)


# -- bad input ----------------------------------------------------------------------------


def test_bad_files_fail_one_by_one_and_the_rest_is_ingested(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    good = [
        write_text(tmp_path / "good.md", "# Good\n\nThis file is fine."),
        write_pdf(tmp_path / "good.pdf", [["A fine PDF page."]]),
    ]
    bad = {
        "corrupt": write_junk(tmp_path / "corrupt.pdf", size=1500),
        "encrypted": write_encrypted_pdf(tmp_path / "locked.pdf", [["Secret page."]]),
        "junk": write_junk(tmp_path / "junk.txt", size=1500, seed=1),
        "empty": write_text(tmp_path / "empty.txt", ""),
        "missing": tmp_path / "does-not-exist.txt",
        "big": write_text(tmp_path / "big.txt", "large file " * 300),
        "unknown": write_text(tmp_path / "data.xyz", "text in an unknown format"),
        "empty-docx": write_text(tmp_path / "empty.docx", ""),
    }
    jsonl = write_jsonl(
        tmp_path / "records.jsonl",
        [
            {"_id": "r1", "text": "First record."},
            '{"_id": "r2", "text": ',
            {"_id": "r3", "text": "Third record."},
        ],
    )
    eng = make_engine(ingest={"max_file_bytes": 2000})
    report = eng.ingest([*good, *bad.values(), jsonl])

    reasons = failures(report)
    assert len(report.failed) == len(bad) + 1  # one entry per bad file, plus the bad JSONL line
    assert set(reasons) == {str(p) for p in bad.values()} | {str(jsonl)}
    assert reasons[str(bad["corrupt"])].startswith("corrupt or unreadable PDF")
    assert reasons[str(bad["encrypted"])] == "encrypted PDF (a password is required)"
    assert reasons[str(bad["junk"])] == "binary content in a text file"
    assert reasons[str(bad["empty"])] == "empty file"
    assert reasons[str(bad["missing"])] == "no such file or directory"
    assert reasons[str(bad["big"])] == "file too large (3300 bytes > limit 2000)"
    assert reasons[str(bad["unknown"])] == "unsupported file type .xyz"
    assert reasons[str(bad["empty-docx"])].startswith("corrupt or unreadable DOCX")
    assert reasons[str(jsonl)].startswith("line 2: invalid JSON")

    assert report.added == 4  # the two good files and the two good JSONL lines
    ids = {d.doc_id for d in eng.documents()}
    assert ids == {str(p.resolve()) for p in good} | {"r1", "r3"}
    assert {h.doc_id for h in all_hits(eng)} == ids


AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _ingest_reading_as_a_user(
    paths: list[Path], data_dir: Path, make_engine: Callable[..., Engine]
) -> dict[str, Any]:
    """Ingest ``paths`` with file permissions enforced, and return the report as a dict.

    Root reads a chmod-000 file anyway (CAP_DAC_OVERRIDE), so under root the ingestion runs in a
    subprocess whose capability bounding set lacks the two capabilities that bypass permission
    checks (util-linux's setpriv): the same uid, but the owner's 000 bits now apply.
    """
    if not AS_ROOT:
        return make_engine().ingest(paths).to_dict()
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop root's file-permission override"
    res = subprocess.run(
        [
            setpriv,
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
            str(RAGLINE),
            "ingest",
            *map(str, paths),
            "--json",
        ],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")},
            "RAGLINE_DATA_DIR": str(data_dir),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode in (0, 2), res.stdout + res.stderr
    report: dict[str, Any] = json.loads(res.stdout)
    return report


def test_unreadable_file_is_reported(tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    locked = write_text(tmp_path / "locked.txt", "You cannot read me.")
    locked.chmod(0)
    ok = write_text(tmp_path / "ok.txt", "You can read me.")
    try:
        report = _ingest_reading_as_a_user([locked, ok], tmp_path / "data", make_engine)
    finally:
        locked.chmod(0o644)
    assert {f["path"]: f["reason"] for f in report["failed"]} == {str(locked): "permission denied"}
    assert report["added"] == 1


def test_unreadable_directory_is_reported(tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    d = tmp_path / "closed"
    d.mkdir()
    write_text(d / "inside.txt", "hidden")
    d.chmod(0)
    try:
        report = _ingest_reading_as_a_user([d], tmp_path / "data", make_engine)
    finally:
        d.chmod(0o755)
    assert {f["path"]: f["reason"] for f in report["failed"]} == {str(d): "permission denied"}


# -- the command line ---------------------------------------------------------------------


def _cli(data_dir: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    env["RAGLINE_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [str(RAGLINE), "ingest", *map(str, args)], env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_exit_codes_and_failure_summary(tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    data = tmp_path / "data"
    good = write_text(tmp_path / "good notes.md", "# Good notes\n\nThe lantern budget was approved.")
    ok = _cli(data, good, "--meta", "team=ops", "--meta", "year=2024")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "added" in ok.stdout and "failed" in ok.stdout

    nested = tmp_path / "a-rather-long-directory-name-to-make-the-path-wider-than-a-terminal" / "sub"
    nested.mkdir(parents=True)
    bad = {
        write_junk(tmp_path / "draft [v2].txt"): "binary content in a text file",
        write_junk(nested / "scan.pdf"): "corrupt or unreadable PDF",
        tmp_path / "missing.md": "no such file or directory",
    }
    other = write_text(tmp_path / "other.txt", "Another good file about copper.")
    res = _cli(data, *bad, other)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    for path, reason in bad.items():
        assert any(f"{path}: {reason}" in line for line in lines), f"{path} not reported in:\n{res.stdout}"

    as_json = _cli(data, *bad, other, "--json")
    assert as_json.returncode == 2
    summary = json.loads(as_json.stdout)
    assert {f["path"] for f in summary["failed"]} == {str(p) for p in bad}
    assert summary["unchanged"] == 1

    # the CLI's --meta reached the index
    eng = make_engine(data_dir=data)
    hits = all_hits(eng)
    note = hit_with(hits, "lantern budget")
    assert (note.payload["team"], note.payload["year"], note.title) == ("ops", 2024, "Good notes")
    assert hit_with(hits, "copper").payload.get("team") is None
