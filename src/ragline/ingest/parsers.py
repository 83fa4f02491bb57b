"""File parsers: each turns one file into ParsedDocuments with sections and metadata.

Formats: PDF (pypdf, one section per page), HTML (selectolax, sections by
heading), Markdown (markdown-it-py, sections by heading), plain text, DOCX
(python-docx, sections by Heading styles) and JSONL (one document per line;
BEIR's corpus.jsonl as is: ``_id``, ``title``, ``text``).

Every failure is a ParseError whose message is the reason shown to the user.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ragline.errors import ParseError
from ragline.ingest.cleaning import clean_text, looks_like_text
from ragline.types import ParsedDocument, Section

Parser = Callable[[Path, str], list[ParsedDocument]]

_TEXT_SUFFIXES = {".txt", ".text", ".rst", ".log"}
_MD_SUFFIXES = {".md", ".markdown"}
_HTML_SUFFIXES = {".html", ".htm", ".xhtml"}


def supported_suffixes() -> set[str]:
    return _TEXT_SUFFIXES | _MD_SUFFIXES | _HTML_SUFFIXES | {".pdf", ".docx", ".jsonl"}


def parse_file(path: Path, doc_id: str) -> list[ParsedDocument]:
    """Parse one file. ``doc_id`` is the id for single-document formats (JSONL lines carry their own)."""
    suffix = path.suffix.lower()
    parser = _PARSERS.get(suffix)
    if parser is None:
        raise ParseError(f"unsupported file type {suffix or '(no extension)'}")
    return parser(path, doc_id)


# -- plain text and markdown ---------------------------------------------------------


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise ParseError("empty file")
    if b"\x00" in raw[:8192]:
        raise ParseError("binary content in a text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        if not looks_like_text(text[:20000]):
            raise ParseError("not valid UTF-8 text (binary content?)") from None
    if not looks_like_text(text[:20000]):
        raise ParseError("binary content in a text file")
    return text


def _nonempty(sections: list[Section]) -> list[Section]:
    out = []
    for s in sections:
        s.text = clean_text(s.text)
        if s.text:
            out.append(s)
    return out


def _finish(
    doc_id: str, path: Path, title: str, sections: list[Section], **meta: Any
) -> list[ParsedDocument]:
    sections = _nonempty(sections)
    if not sections:
        raise ParseError("no extractable text")
    return [
        ParsedDocument(
            doc_id=doc_id,
            source=str(path),
            title=clean_text(title) or path.stem,
            sections=sections,
            metadata=dict(meta),
        )
    ]


def parse_text(path: Path, doc_id: str) -> list[ParsedDocument]:
    text = _read_text(path)
    return _finish(doc_id, path, path.stem, [Section(text)])


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def parse_markdown(path: Path, doc_id: str) -> list[ParsedDocument]:
    from markdown_it import MarkdownIt

    text = _read_text(path)
    md = MarkdownIt("commonmark")
    tokens = md.parse(text)
    lines = text.split("\n")
    # heading line ranges from the token stream (ignores '#' inside code fences)
    headings: list[tuple[int, int, int, str]] = []  # (start_line, end_line, level, text)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map:
            level = int(tok.tag[1])
            inline = tokens[i + 1]
            # end_line: a setext heading's underline (=== / ---) is part of the heading
            headings.append((tok.map[0], tok.map[1], level, inline.content.strip()))
    title = ""
    sections: list[Section] = []
    path_stack: list[tuple[int, str]] = []
    prev_line = 0
    cur_path: list[str] = []
    for start, end, level, htext in [*headings, (len(lines), len(lines), 0, "")]:
        body = "\n".join(lines[prev_line:start])
        if prev_line > 0 or start > 0:
            sections.append(Section(_strip_md(body), heading_path=list(cur_path)))
        if level == 0:
            break
        if not title and level == 1:
            title = htext
        while path_stack and path_stack[-1][0] >= level:
            path_stack.pop()
        path_stack.append((level, htext))
        cur_path = [h for _, h in path_stack]
        prev_line = end
    if not headings:
        sections = [Section(_strip_md(text))]
    return _finish(doc_id, path, title or path.stem, sections)


_MD_NOISE = [
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links -> text
    (re.compile(r"^\s{0,3}>\s?", re.M), ""),  # block quotes
    (re.compile(r"^\s*```.*$", re.M), ""),  # code fences
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"^\s*\|?\s*:?-{3,}.*$", re.M), ""),  # table rules
]


def _strip_md(text: str) -> str:
    for pat, rep in _MD_NOISE:
        text = pat.sub(rep, text)
    return text


# -- HTML --------------------------------------------------------------------------


_HTML_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
# elements whose text continues the surrounding paragraph
_HTML_INLINE = frozenset(
    "a abbr acronym b bdi bdo big cite code data del dfn em font i img ins kbd label mark nobr q s samp "  # noqa: SIM905
    "small span strike strong sub sup time tt u var wbr".split()
)


def parse_html(path: Path, doc_id: str) -> list[ParsedDocument]:
    from selectolax.lexbor import LexborHTMLParser

    text = _read_text(path)
    tree = LexborHTMLParser(text)
    for sel in ("script", "style", "noscript", "nav", "header", "footer", "template", "svg", "form"):
        for node in tree.css(sel):
            node.decompose()
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node else ""
    body = tree.css_first("main") or tree.css_first("article") or tree.body
    if body is None:
        raise ParseError("no <body> in HTML")
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            sections.append(Section("\n\n".join(buf), heading_path=[h for _, h in stack]))
            buf.clear()

    # Walk the tree in document order. Inline elements and text nodes join the current
    # paragraph; any other element (p, div, li, td, ...) starts and ends one, so text that
    # sits directly in a <div> or <section> is kept and nothing is repeated.
    inline: list[str] = []

    def end_block() -> None:
        content = " ".join("".join(inline).split())
        inline.clear()
        if content:
            buf.append(content)

    todo: list[Any] = list(reversed(list(body.iter(include_text=True))))
    while todo:
        node = todo.pop()
        if node is None:
            end_block()
            continue
        tag = node.tag or ""
        if tag == "-text":
            inline.append(node.text(deep=False) or "")
        elif tag.startswith("-"):  # comments, doctype
            continue
        elif tag in _HTML_HEADINGS:
            end_block()
            content = " ".join(node.text(separator=" ").split())
            if not content:
                continue
            flush()
            level = int(tag[1])
            if not title and level == 1:
                title = content
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, content))
        elif tag == "pre":
            end_block()
            code = (node.text() or "").strip("\n")
            if code.strip():
                buf.append(code)
        elif tag == "br":
            end_block()
        elif tag in _HTML_INLINE:
            todo.extend(reversed(list(node.iter(include_text=True))))
        else:
            end_block()
            todo.append(None)
            todo.extend(reversed(list(node.iter(include_text=True))))
    end_block()
    flush()
    if not sections:
        whole = body.text(separator="\n", strip=True)
        sections = [Section(whole)]
    return _finish(doc_id, path, title or path.stem, sections)


# -- PDF ---------------------------------------------------------------------------


def parse_pdf(path: Path, doc_id: str) -> list[ParsedDocument]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception as e:
                raise ParseError(f"encrypted PDF ({e})") from e
            if not ok:
                raise ParseError("encrypted PDF (a password is required)")
        meta_title = ""
        try:
            if reader.metadata and reader.metadata.title:
                meta_title = str(reader.metadata.title)
        except Exception:
            meta_title = ""
        sections = []
        for i, page in enumerate(reader.pages, start=1):
            sections.append(Section(page.extract_text() or "", page=i))
    except ParseError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise ParseError(f"corrupt or unreadable PDF ({type(e).__name__}: {e})") from e
    except Exception as e:  # pypdf raises a wide range on malformed input
        raise ParseError(f"corrupt or unreadable PDF ({type(e).__name__}: {e})") from e
    if not any(s.text.strip() for s in sections):
        raise ParseError("PDF has no extractable text (scanned images need OCR)")
    title = meta_title
    if not title:
        first = next((s.text for s in sections if s.text.strip()), "")
        title = first.strip().split("\n", 1)[0][:200]
    return _finish(doc_id, path, title, sections, pages=len(sections))


# -- DOCX --------------------------------------------------------------------------


def parse_docx(path: Path, doc_id: str) -> list[ParsedDocument]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ParseError(f"corrupt or unreadable DOCX ({type(e).__name__})") from e
    except Exception as e:
        raise ParseError(f"corrupt or unreadable DOCX ({type(e).__name__}: {e})") from e
    title = document.core_properties.title or ""
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            sections.append(Section("\n\n".join(buf), heading_path=[h for _, h in stack]))
            buf.clear()

    # body paragraphs and tables in document order, so a table belongs to the section it sits in
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = [" | ".join(c.text.strip() for c in row.cells) for row in block.rows]
            buf.append("\n".join(rows))
            continue
        para = block
        text = para.text.strip()
        if not text:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        m = re.match(r"Heading (\d)", style)
        if style == "Title":
            title = title or text
            continue
        if m:
            flush()
            level = int(m.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, text))
        else:
            buf.append(text)
    flush()
    return _finish(doc_id, path, title or path.stem, sections)


# -- JSONL -------------------------------------------------------------------------

_ID_KEYS = ("_id", "id", "doc_id")
_TEXT_KEYS = ("text", "content", "body", "contents")


def iter_jsonl(path: Path) -> Iterator[ParsedDocument | ParseError]:
    """Yield one document per line; a bad line yields a ParseError naming the line."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield ParseError(f"line {lineno}: invalid JSON ({e.msg if hasattr(e, 'msg') else e})")
                continue
            if not isinstance(obj, dict):
                yield ParseError(f"line {lineno}: expected a JSON object")
                continue
            doc_id = next((str(obj[k]) for k in _ID_KEYS if obj.get(k) not in (None, "")), None)
            text = next((obj[k] for k in _TEXT_KEYS if isinstance(obj.get(k), str)), None)
            if doc_id is None:
                yield ParseError(f"line {lineno}: no id field ({'/'.join(_ID_KEYS)})")
                continue
            raw_title = obj.get("title")
            title = raw_title if isinstance(raw_title, str) else ""
            text = clean_text(text or "")
            if not text and not title:
                yield ParseError(f"line {lineno}: document {doc_id} has no text")
                continue
            meta = {
                k: v
                for k, v in obj.items()
                if k not in (*_ID_KEYS, *_TEXT_KEYS, "title") and isinstance(v, str | int | float | bool)
            }
            if isinstance(obj.get("metadata"), dict):
                meta.update(
                    {k: v for k, v in obj["metadata"].items() if isinstance(v, str | int | float | bool)}
                )
            yield ParsedDocument(
                doc_id=doc_id,
                source=f"{path}#L{lineno}",
                title=clean_text(title),
                sections=[Section(text or title)],
                metadata=meta,
            )


def parse_jsonl(path: Path, doc_id: str) -> list[ParsedDocument]:
    docs = []
    for item in iter_jsonl(path):
        if isinstance(item, ParseError):
            raise item
        docs.append(item)
    if not docs:
        raise ParseError("empty file")
    return docs


_PARSERS: dict[str, Parser] = {
    **{s: parse_text for s in _TEXT_SUFFIXES},
    **{s: parse_markdown for s in _MD_SUFFIXES},
    **{s: parse_html for s in _HTML_SUFFIXES},
    ".pdf": parse_pdf,
    ".docx": parse_docx,
    ".jsonl": parse_jsonl,
}
