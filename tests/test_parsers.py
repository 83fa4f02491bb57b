"""Parsers: every supported format yields its text with title, heading path, page and metadata.

All fixture files are written by the tests (see fixtures.py); these tests need no model.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import (
    pdf_bytes,
    write_docx,
    write_encrypted_pdf,
    write_jsonl,
    write_junk,
    write_pdf,
    write_text,
)
from ragline.errors import ParseError
from ragline.ingest.parsers import iter_jsonl, parse_file, supported_suffixes
from ragline.types import ParsedDocument, Section


def _one(docs: list[ParsedDocument]) -> ParsedDocument:
    assert len(docs) == 1
    return docs[0]


def _section_with(doc: ParsedDocument, needle: str) -> Section:
    found = [s for s in doc.sections if needle in s.text]
    assert found, f"{needle!r} not in any section of {doc.source}: {[s.text for s in doc.sections]}"
    return found[0]


# -- PDF ----------------------------------------------------------------------------------

PDF_PAGES = [
    ["Quarterly report (draft)", "Revenue grew in the northern region."],
    ["Page two discusses copper prices.", "Costs fell by ten percent."],
    ["The appendix lists every harbor station."],
]


def test_generated_pdf_is_valid_for_pypdf() -> None:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(pdf_bytes(PDF_PAGES, title="Q3 Report")))
    assert len(reader.pages) == 3
    assert "copper prices" in (reader.pages[1].extract_text() or "")
    assert reader.metadata is not None and reader.metadata.title == "Q3 Report"


def test_pdf_one_section_per_page_with_page_numbers(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "report.pdf", PDF_PAGES, title="Q3 Report")
    doc = _one(parse_file(path, "doc-1"))
    assert doc.doc_id == "doc-1"
    assert doc.source == str(path)
    assert doc.title == "Q3 Report"
    assert doc.metadata["pages"] == 3
    assert [s.page for s in doc.sections] == [1, 2, 3]
    assert _section_with(doc, "northern region").page == 1
    assert _section_with(doc, "copper prices").page == 2
    assert _section_with(doc, "harbor station").page == 3
    assert "Quarterly report (draft)" in doc.sections[0].text  # parentheses survive


def test_pdf_title_falls_back_to_first_line(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "untitled.pdf", PDF_PAGES)
    assert _one(parse_file(path, "d")).title == "Quarterly report (draft)"


def test_pdf_blank_page_is_skipped_but_numbering_kept(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "gap.pdf", [["First page text."], [], ["Third page text."]])
    doc = _one(parse_file(path, "d"))
    assert [s.page for s in doc.sections] == [1, 3]


@pytest.mark.parametrize(
    ("writer", "reason"),
    [
        (lambda p: write_junk(p), "corrupt or unreadable PDF"),
        (lambda p: write_encrypted_pdf(p, [["Top secret numbers."]]), "encrypted PDF"),
        (lambda p: p.write_bytes(b""), "corrupt or unreadable PDF"),
        (lambda p: write_pdf(p, [[], []]), "no extractable text"),
    ],
    ids=["random-bytes", "encrypted", "empty", "no-text"],
)
def test_bad_pdfs_raise_parse_error_with_reason(
    tmp_path: Path, writer: Callable[[Path], object], reason: str
) -> None:
    path = tmp_path / "bad.pdf"
    writer(path)
    with pytest.raises(ParseError, match=reason):
        parse_file(path, "d")


# -- HTML ---------------------------------------------------------------------------------

HTML = """<!doctype html>
<html><head><title>Harbor Handbook</title>
<style>.secret-style { color: red }</style>
<script>var secretScript = "do not index";</script>
</head><body>
<nav><a href="/">Home</a> | <a href="/about">NavigationLink</a></nav>
<header>SiteHeaderBanner</header>
<h1>Harbor Handbook</h1>
<p>Welcome to the <b>harbor</b> handbook.</p>
<h2>Mooring</h2>
<p>Boats moor at the <a href="#n">north pier</a>.</p>
<ul><li>Bring ropes</li><li><p>Bring fenders</p></li></ul>
<h3>Night mooring</h3>
<p>Lanterns are required after dark.</p>
<div>Night staff sit in the copper cabin.</div>
<h2>Fees</h2>
<table><tr><th>Boat</th><th>Fee</th></tr><tr><td>Small</td><td>10 coins</td></tr></table>
<pre>fee = length * 2
    + tax</pre>
<footer>FooterCopyright 2024</footer>
</body></html>
"""


def test_html_title_heading_path_and_noise_dropped(tmp_path: Path) -> None:
    doc = _one(parse_file(write_text(tmp_path / "handbook.html", HTML), "h"))
    assert doc.title == "Harbor Handbook"
    text = doc.text
    for noise in ("secretScript", "secret-style", "NavigationLink", "SiteHeaderBanner", "FooterCopyright"):
        assert noise not in text
    assert _section_with(doc, "Welcome to the harbor handbook").heading_path == ["Harbor Handbook"]
    assert _section_with(doc, "north pier").heading_path == ["Harbor Handbook", "Mooring"]
    assert _section_with(doc, "Bring fenders").heading_path == ["Harbor Handbook", "Mooring"]
    assert _section_with(doc, "Lanterns").heading_path == ["Harbor Handbook", "Mooring", "Night mooring"]
    assert _section_with(doc, "10 coins").heading_path == ["Harbor Handbook", "Fees"]
    assert text.count("Bring fenders") == 1  # a <p> inside an <li> is not repeated


def test_html_text_outside_paragraph_tags_is_kept(tmp_path: Path) -> None:
    doc = _one(parse_file(write_text(tmp_path / "handbook.html", HTML), "h"))
    night = _section_with(doc, "copper cabin")
    assert night.heading_path == ["Harbor Handbook", "Mooring", "Night mooring"]
    assert "fee = length * 2" in _section_with(doc, "+ tax").text


def test_html_without_title_uses_first_h1(tmp_path: Path) -> None:
    path = write_text(tmp_path / "page.html", "<html><body><h1>Only Heading</h1><p>Body.</p></body></html>")
    assert _one(parse_file(path, "p")).title == "Only Heading"


def test_html_without_any_heading_uses_file_stem(tmp_path: Path) -> None:
    path = write_text(tmp_path / "plain-page.htm", "<html><body><div>Just some text.</div></body></html>")
    doc = _one(parse_file(path, "p"))
    assert doc.title == "plain-page"
    assert "Just some text." in doc.text


# -- Markdown -----------------------------------------------------------------------------

MARKDOWN = """Preface line before any heading.

# Field Guide

Welcome to the field guide.

## Install

Run the installer.

```bash
# this is a shell comment, not a heading
pip install fieldguide
```

### On Linux

Use the package manager.

#### Debian

Use apt.

## Usage

Read the **manual** at [the site](https://example.org).

# Appendix

Extra notes.
"""


def test_markdown_title_and_nested_heading_paths(tmp_path: Path) -> None:
    doc = _one(parse_file(write_text(tmp_path / "guide.md", MARKDOWN), "g"))
    assert doc.title == "Field Guide"
    assert _section_with(doc, "Preface line").heading_path == []
    assert _section_with(doc, "Welcome").heading_path == ["Field Guide"]
    assert _section_with(doc, "Run the installer").heading_path == ["Field Guide", "Install"]
    assert _section_with(doc, "package manager").heading_path == ["Field Guide", "Install", "On Linux"]
    assert _section_with(doc, "Use apt").heading_path == ["Field Guide", "Install", "On Linux", "Debian"]
    assert _section_with(doc, "Read the manual").heading_path == ["Field Guide", "Usage"]
    assert _section_with(doc, "Extra notes").heading_path == ["Appendix"]


def test_markdown_hash_inside_code_fence_is_not_a_heading(tmp_path: Path) -> None:
    doc = _one(parse_file(write_text(tmp_path / "guide.md", MARKDOWN), "g"))
    code = _section_with(doc, "pip install fieldguide")
    assert code.heading_path == ["Field Guide", "Install"]
    assert "# this is a shell comment, not a heading" in code.text
    all_paths = {h for s in doc.sections for h in s.heading_path}
    assert not any("shell comment" in h for h in all_paths)


def test_markdown_markup_is_stripped_but_words_kept(tmp_path: Path) -> None:
    doc = _one(parse_file(write_text(tmp_path / "guide.md", MARKDOWN), "g"))
    usage = _section_with(doc, "Read the")
    assert "Read the manual at the site." in usage.text
    assert "**" not in usage.text and "](" not in usage.text


def test_markdown_setext_headings(tmp_path: Path) -> None:
    text = "Big Title\n=========\n\nIntro text.\n\nPart One\n--------\n\nPart one text.\n"
    doc = _one(parse_file(write_text(tmp_path / "setext.md", text), "s"))
    assert doc.title == "Big Title"
    assert _section_with(doc, "Part one text").heading_path == ["Big Title", "Part One"]
    assert "=" not in doc.text and "---" not in doc.text


def test_markdown_without_h1_uses_file_stem(tmp_path: Path) -> None:
    doc = _one(parse_file(write_text(tmp_path / "notes.markdown", "## Only h2\n\nBody text.\n"), "n"))
    assert doc.title == "notes"
    assert doc.sections[0].heading_path == ["Only h2"]


# -- plain text ---------------------------------------------------------------------------


def test_plain_text_title_is_file_stem_and_text_is_cleaned(tmp_path: Path) -> None:
    raw = "\ufeffFirst   paragraph with  extra spaces.\r\n\r\n\r\n\r\nSecond para-\ngraph.\x07\n"
    doc = _one(parse_file(write_text(tmp_path / "meeting-notes.txt", raw), "t"))
    assert doc.title == "meeting-notes"
    assert doc.source == str(tmp_path / "meeting-notes.txt")
    assert doc.text == "First paragraph with extra spaces.\n\nSecond paragraph."
    assert doc.sections[0].heading_path == [] and doc.sections[0].page is None


def test_mostly_ascii_text_with_a_stray_latin1_byte_is_read(tmp_path: Path) -> None:
    path = tmp_path / "legacy.txt"
    path.write_bytes(("The caf\xe9 menu lists soups, breads and more words here. " * 3).encode("latin-1"))
    doc = _one(parse_file(path, "l"))
    assert "menu lists soups" in doc.text and "more words here" in doc.text


def test_mostly_non_utf8_text_is_rejected_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "legacy.txt"
    path.write_bytes("\xe9t\xe9 \xe0 l'h\xf4tel: cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    with pytest.raises(ParseError, match="not valid UTF-8"):
        parse_file(path, "l")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"", "empty file"),
        ("blank.md", b"  \n\n \t\n", "empty file"),
        ("junk.txt", None, "binary content"),
    ],
)
def test_bad_text_files(tmp_path: Path, name: str, content: bytes | None, reason: str) -> None:
    path = tmp_path / name
    if content is None:
        write_junk(path)
    else:
        path.write_bytes(content)
    with pytest.raises(ParseError, match=reason):
        parse_file(path, "d")


def test_binary_junk_without_nul_bytes_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk.txt"
    path.write_bytes(bytes(b for b in range(128, 256)) * 40)
    with pytest.raises(ParseError, match=r"UTF-8|binary"):
        parse_file(path, "d")


def test_unknown_extension_is_rejected(tmp_path: Path) -> None:
    path = write_text(tmp_path / "data.xyz", "some text")
    with pytest.raises(ParseError, match=r"unsupported file type \.xyz"):
        parse_file(path, "d")
    assert ".xyz" not in supported_suffixes()


# -- DOCX ---------------------------------------------------------------------------------

DOCX_BLOCKS = [
    ("title", "Operations Manual"),
    ("p", "This manual covers daily operations."),
    ("h1", "Startup"),
    ("p", "Press the green button."),
    ("table", [["Step", "Action"], ["1", "Check battery"], ["2", "Open valve"]]),
    ("h2", "Cold start"),
    ("p", "Warm the engine first."),
    ("h1", "Shutdown"),
    ("p", "Close the valve."),
]


def test_docx_title_headings_paragraphs_and_table(tmp_path: Path) -> None:
    doc = _one(parse_file(write_docx(tmp_path / "manual.docx", DOCX_BLOCKS), "m"))
    assert doc.title == "Operations Manual"
    assert _section_with(doc, "daily operations").heading_path == []
    assert _section_with(doc, "green button").heading_path == ["Startup"]
    assert _section_with(doc, "Warm the engine").heading_path == ["Startup", "Cold start"]
    assert _section_with(doc, "Close the valve").heading_path == ["Shutdown"]
    assert "Operations Manual" not in doc.text  # the Title paragraph is the title, not body text
    table = _section_with(doc, "Check battery")
    assert "Step | Action" in table.text and "2 | Open valve" in table.text
    # the table sits under "Startup" in the document, so its text belongs to that section
    assert table.heading_path == ["Startup"]


def test_docx_without_title_uses_file_stem(tmp_path: Path) -> None:
    doc = _one(parse_file(write_docx(tmp_path / "memo.docx", [("p", "Short memo text.")]), "m"))
    assert doc.title == "memo"


def test_corrupt_docx(tmp_path: Path) -> None:
    path = write_junk(tmp_path / "broken.docx")
    with pytest.raises(ParseError, match="corrupt or unreadable DOCX"):
        parse_file(path, "d")


# -- JSONL --------------------------------------------------------------------------------


def test_beir_corpus_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Copper", "text": "Copper is a soft metal.", "year": 2020, "lang": "en"},
            {"_id": "d2", "title": "", "text": "Silver conducts heat.", "metadata": {"url": "https://x"}},
            {"_id": "d3", "title": "Title only", "text": ""},
        ],
    )
    docs = parse_file(path, "ignored")
    assert [d.doc_id for d in docs] == ["d1", "d2", "d3"]
    d1, d2, d3 = docs
    assert d1.title == "Copper" and d1.text == "Copper is a soft metal."
    assert d1.metadata == {"year": 2020, "lang": "en"}
    assert d1.source == f"{path}#L1"
    assert d2.metadata == {"url": "https://x"} and d2.title == ""
    assert d3.text == "Title only"


def test_jsonl_alternative_keys_and_non_scalar_fields(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "alt.jsonl",
        [{"id": 7, "content": "Seven.", "tags": ["a", "b"], "nested": {"x": 1}, "ok": True}],
    )
    doc = _one(parse_file(path, "ignored"))
    assert doc.doc_id == "7"
    assert doc.text == "Seven."
    assert doc.metadata == {"ok": True}  # lists and objects are not metadata values


def test_jsonl_bad_lines_are_reported_by_line_number(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"_id": "a", "text": "Good line one."},
            "{not json",
            "[1, 2, 3]",
            {"text": "no id here"},
            {"_id": "e", "text": ""},
            "",
            {"_id": "f", "text": "Good line six."},
        ],
    )
    items = list(iter_jsonl(path))
    good = [i for i in items if not isinstance(i, ParseError)]
    bad = [str(i) for i in items if isinstance(i, ParseError)]
    assert [d.doc_id for d in good] == ["a", "f"]
    assert bad[0].startswith("line 2: invalid JSON")
    assert bad[1] == "line 3: expected a JSON object"
    assert bad[2].startswith("line 4: no id field")
    assert bad[3] == "line 5: document e has no text"
    assert len(bad) == 4
    with pytest.raises(ParseError, match="line 2"):
        parse_file(path, "x")  # parse_file is all-or-nothing; the pipeline uses iter_jsonl


def test_empty_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ParseError, match="empty file"):
        parse_file(path, "x")
