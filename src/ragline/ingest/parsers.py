"""File parsers: each turns one file into ParsedDocuments with sections and metadata.

Formats: PDF (pypdf, one section per page), HTML (selectolax, sections by
heading), Markdown (markdown-it-py, sections by heading), plain text, DOCX
(python-docx, sections by Heading styles) and JSONL (one document per line;
BEIR's corpus.jsonl as is: ``_id``, ``title``, ``text``).

Every failure is a ParseError whose message is the reason shown to the user: it names what is
wrong with the file, never a library's exception or a path on the server (those go to the log).

Hostile files are bounded by ``ParseLimits`` (from ``ingest.*``): a DOCX's members are sized and
its XML counted before python-docx reads anything, a PDF's page tree is walked with a budget
(each page object once), and the text a PDF yields is capped.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragline.config import IngestSettings
from ragline.errors import ParseError
from ragline.ingest.cleaning import clean_text, looks_like_text
from ragline.types import ParsedDocument, Section

log = logging.getLogger("ragline.ingest")


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Caps on what one file may cost to parse (see ``IngestSettings``)."""

    max_unpacked_bytes: int = 100 * 1024 * 1024
    max_archive_members: int = 10_000
    max_xml_elements: int = 1_000_000
    max_pdf_pages: int = 2000
    #: Over max_pdf_pages (or the PDF text cap): keep the first part with a warning, instead of failing.
    truncate: bool = False

    @classmethod
    def from_settings(cls, s: IngestSettings) -> ParseLimits:
        return cls(
            max_unpacked_bytes=s.max_unpacked_bytes,
            max_archive_members=s.max_archive_members,
            max_xml_elements=s.max_xml_elements,
            max_pdf_pages=s.max_pdf_pages,
            truncate=s.on_limit == "truncate",
        )


_DEFAULT_LIMITS = ParseLimits()

Parser = Callable[[Path, str, ParseLimits], list[ParsedDocument]]

_TEXT_SUFFIXES = {".txt", ".text", ".rst", ".log"}
_MD_SUFFIXES = {".md", ".markdown"}
_HTML_SUFFIXES = {".html", ".htm", ".xhtml"}


def supported_suffixes() -> set[str]:
    return _TEXT_SUFFIXES | _MD_SUFFIXES | _HTML_SUFFIXES | {".pdf", ".docx", ".jsonl"}


def parse_file(path: Path, doc_id: str, limits: ParseLimits | None = None) -> list[ParsedDocument]:
    """Parse one file. ``doc_id`` is the id for single-document formats (JSONL lines carry their own)."""
    suffix = path.suffix.lower()
    parser = _PARSERS.get(suffix)
    if parser is None:
        raise ParseError(f"unsupported file type {suffix or '(no extension)'}")
    return parser(path, doc_id, limits or _DEFAULT_LIMITS)


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


def parse_text(path: Path, doc_id: str, limits: ParseLimits = _DEFAULT_LIMITS) -> list[ParsedDocument]:
    text = _read_text(path)
    return _finish(doc_id, path, path.stem, [Section(text)])


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def parse_markdown(path: Path, doc_id: str, limits: ParseLimits = _DEFAULT_LIMITS) -> list[ParsedDocument]:
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


_TAG_OPEN = re.compile(r"<[A-Za-z]")


def parse_html(path: Path, doc_id: str, limits: ParseLimits = _DEFAULT_LIMITS) -> list[ParsedDocument]:
    from selectolax.lexbor import LexborHTMLParser

    text = _read_text(path)
    # every element starts with "<" and a letter: an upper bound, counted before the DOM is built
    tags = sum(1 for _ in _TAG_OPEN.finditer(text))
    if tags > limits.max_xml_elements:
        raise ParseError(
            f"HTML has more than {limits.max_xml_elements} elements (limit ingest.max_xml_elements)"
        )
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


_PDF_MAX_DEPTH = 64
_PDF_INHERITED = ("/Resources", "/MediaBox", "/CropBox", "/Rotate")


def _pdf_pages(reader: Any, max_pages: int) -> tuple[list[Any], bool]:
    """The first ``max_pages`` pages of the page tree, and whether there are more.

    pypdf's own walk visits a page once per reference to it, so a small file whose tree lists one
    page 20,000 times (or nests /Pages nodes that list each other twice: 2^depth pages) becomes
    that many pages. Here every object is visited once (a page has one parent), the walk stops
    at the cap, and the number of nodes it may visit is bounded too.
    """
    from pypdf import PageObject
    from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject

    root = reader.trailer["/Root"].get_object()
    top = root.get("/Pages")
    if top is None:
        raise ParseError("corrupt or unreadable PDF (no page tree)")
    seen: set[tuple[int, int]] = set()
    pages: list[Any] = []
    budget = 4 * max_pages + 1000  # intermediate /Pages nodes included
    stack: list[tuple[Any, dict[str, Any], int]] = [(top, {}, 0)]
    while stack:
        ref, inherit, depth = stack.pop()
        if isinstance(ref, IndirectObject):
            key = (ref.idnum, ref.generation)
            if key in seen:
                continue  # listed twice: counted once
            seen.add(key)
        node = ref.get_object()
        if not isinstance(node, DictionaryObject) or not node:
            continue
        budget -= 1
        if budget < 0 or depth > _PDF_MAX_DEPTH:
            raise ParseError("corrupt or unreadable PDF (malformed page tree)")
        kind = node.get("/Type")
        kids = node.get("/Kids")
        if kind == "/Pages" or (kind is None and kids is not None):
            inherited = dict(inherit)
            for attr in _PDF_INHERITED:
                if attr in node:
                    inherited[attr] = node[attr]
            kids = kids.get_object() if kids is not None else None
            if isinstance(kids, ArrayObject):
                stack.extend((kid, inherited, depth + 1) for kid in reversed(kids))
            continue
        if len(pages) >= max_pages:
            return pages, True
        page = PageObject(reader, ref if isinstance(ref, IndirectObject) else None)
        if not isinstance(ref, IndirectObject):
            page.update(node)
        for attr, value in inherit.items():
            if attr not in page:
                page[NameObject(attr)] = value
        pages.append(page)
    return pages, False


def parse_pdf(path: Path, doc_id: str, limits: ParseLimits = _DEFAULT_LIMITS) -> list[ParsedDocument]:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import LimitReachedError

    warnings: list[str] = []
    cap = limits.max_unpacked_bytes
    # no stream may inflate past the text cap (pypdf's own default is 75 MB per stream)
    bound = min(75_000_000, cap)
    try:
        with apply_configuration(
            zlib_maximum_output_length=bound,
            lzw_maximum_output_length=bound,
            run_length_maximum_output_length=bound,
            brotli_maximum_output_length=bound,
            jbig2_maximum_output_length=bound,
            array_based_stream_maximum_output_length=bound,
        ):
            reader = PdfReader(str(path))
            if reader.is_encrypted:
                try:
                    ok = reader.decrypt("")
                except Exception as e:
                    log.info("PDF %s: decrypt failed: %r", path.name, e)
                    raise ParseError("encrypted PDF (unsupported encryption)") from e
                if not ok:
                    raise ParseError("encrypted PDF (a password is required)")
            meta_title = ""
            try:
                if reader.metadata and reader.metadata.title:
                    meta_title = str(reader.metadata.title)
            except Exception:
                meta_title = ""
            pages, more = _pdf_pages(reader, limits.max_pdf_pages)
            if more:
                over = f"PDF has more than {limits.max_pdf_pages} pages (limit ingest.max_pdf_pages)"
                if not limits.truncate:
                    raise ParseError(over)
                warnings.append(f"{over}: only the first {limits.max_pdf_pages} were ingested")
            sections = []
            chars = 0
            for i, page in enumerate(pages, start=1):
                text = page.extract_text() or ""
                chars += len(text)
                if chars > cap:
                    over = f"PDF text is larger than {cap} bytes (limit ingest.max_unpacked_bytes)"
                    if not limits.truncate:
                        raise ParseError(over)
                    warnings.append(f"{over}: only the first {i - 1} pages were ingested")
                    break
                sections.append(Section(text, page=i))
    except ParseError:
        raise
    except LimitReachedError as e:
        log.info("PDF %s over a pypdf limit: %s", path.name, e)
        raise ParseError("PDF exceeds a parser limit (a stream or structure too large)") from e
    except RecursionError as e:
        raise ParseError("corrupt or unreadable PDF (nested too deeply)") from e
    except Exception as e:  # pypdf raises a wide range on malformed input
        log.info("PDF %s unreadable: %r", path.name, e)
        raise ParseError("corrupt or unreadable PDF") from e
    if not any(s.text.strip() for s in sections):
        raise ParseError("PDF has no extractable text (scanned images need OCR)")
    title = meta_title
    if not title:
        first = next((s.text for s in sections if s.text.strip()), "")
        title = first.strip().split("\n", 1)[0][:200]
    docs = _finish(doc_id, path, title, sections, pages=len(sections))
    docs[0].warnings.extend(warnings)
    return docs


# -- DOCX --------------------------------------------------------------------------


def _zip_declared_entries(path: Path) -> int | None:
    """The member count in a zip's end-of-central-directory record (None: no such record).

    Read before ``zipfile`` builds one object per member of the central directory."""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        tail_len = min(size, 22 + 0xFFFF)
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    return int(struct.unpack("<H", tail[at + 10 : at + 12])[0])


class _TooManyElements(Exception):
    pass


class _DoctypeRefused(Exception):
    pass


def check_archive(path: Path, limits: ParseLimits, kind: str = "DOCX") -> None:
    """Refuse a zip package before anything in it is inflated: member count, the sum of the
    members' declared sizes (zipfile never inflates a member past its declared size), then the
    XML elements of every XML part, counted by a streaming parser that keeps no tree."""
    from xml.parsers import expat

    count = 0

    def start(name: str, attrs: Any) -> None:
        nonlocal count
        count += 1
        if count > limits.max_xml_elements:
            raise _TooManyElements

    def doctype(*_: Any) -> None:
        raise _DoctypeRefused  # OOXML parts have none; a DTD only brings entities

    try:
        declared = _zip_declared_entries(path)
        if declared is not None and declared >= min(limits.max_archive_members + 1, 0xFFFF):
            raise ParseError(
                f"{kind} holds more than {limits.max_archive_members} files "
                "(limit ingest.max_archive_members)"
            )
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_archive_members:
                raise ParseError(
                    f"{kind} holds more than {limits.max_archive_members} files "
                    "(limit ingest.max_archive_members)"
                )
            total = sum(i.file_size for i in infos)
            if total > limits.max_unpacked_bytes:
                raise ParseError(
                    f"{kind} unpacks to {total} bytes, over the limit of {limits.max_unpacked_bytes} "
                    "(ingest.max_unpacked_bytes)"
                )
            for info in infos:
                if not info.filename.lower().endswith((".xml", ".rels")):
                    continue
                parser = expat.ParserCreate()
                parser.StartElementHandler = start
                parser.StartDoctypeDeclHandler = doctype
                with zf.open(info) as fh:
                    while block := fh.read(1 << 16):
                        parser.Parse(block, False)
                parser.Parse(b"", True)
    except ParseError:
        raise
    except _TooManyElements:
        raise ParseError(
            f"{kind} has more than {limits.max_xml_elements} XML elements (limit ingest.max_xml_elements)"
        ) from None
    except Exception as e:  # BadZipFile, CRC errors, malformed XML (ExpatError), a DTD, ...
        log.info("%s %s unreadable: %r", kind, path.name, e)
        raise ParseError(f"corrupt or unreadable {kind}") from e


def parse_docx(path: Path, doc_id: str, limits: ParseLimits = _DEFAULT_LIMITS) -> list[ParsedDocument]:
    check_archive(path, limits)
    try:
        return _parse_docx(path, doc_id)
    except ParseError:
        raise
    except Exception as e:  # PackageNotFoundError, BadZipFile, KeyError, XMLSyntaxError, ...
        log.info("DOCX %s unreadable: %r", path.name, e)
        raise ParseError("corrupt or unreadable DOCX") from e


def _table_rows(table: Any) -> list[str]:
    """One line per row, one entry per cell actually present. Not python-docx's ``row.cells``:
    that repeats a cell once per grid column it spans (a hostile ``gridSpan`` of 10^9) and walks
    up every vertically merged cell row by row."""
    from docx.table import _Cell

    rows = []
    for tr in table._tbl.tr_lst:
        cells = [_Cell(tc, table).text.strip() for tc in tr.tc_lst if tc.vMerge != "continue"]
        rows.append(" | ".join(cells))
    return rows


def _parse_docx(path: Path, doc_id: str) -> list[ParsedDocument]:
    import docx
    from docx.table import Table

    document = docx.Document(str(path))
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
            buf.append("\n".join(_table_rows(block)))
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


def parse_jsonl(path: Path, doc_id: str, limits: ParseLimits = _DEFAULT_LIMITS) -> list[ParsedDocument]:
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
