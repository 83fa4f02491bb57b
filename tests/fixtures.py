"""Programmatic writers for ingestion test fixtures: every file a test reads is written here.

Nothing is copied from elsewhere: PDFs come from a tiny hand-written PDF generator (valid
PDF 1.4 syntax, one Helvetica text stream per page), DOCX files from python-docx, the rest
are plain text formats.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# A small vocabulary of ordinary English words, so token counts are realistic.
_VOCAB_TEXT = (
    "river mountain engine library window garden signal market harbor forest bridge lantern "
    "journey kernel packet cluster tensor vector search answer question station planet copper "
    "silver orange violet winter summer autumn spring morning evening captain doctor teacher "
    "student farmer baker painter writer reader number letter record archive folder printer "
    "monitor battery cable socket server client driver module function compiler parser "
    "network router switch bucket ladder hammer needle pocket jacket blanket pillow candle"
)
VOCAB = tuple(_VOCAB_TEXT.split())


def words(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCAB) for _ in range(n)]


def sentences(n: int, seed: int = 0, min_words: int = 6, max_words: int = 16) -> str:
    """``n`` capitalised sentences of random vocabulary words, separated by single spaces."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ws = [rng.choice(VOCAB) for _ in range(rng.randint(min_words, max_words))]
        out.append(ws[0].capitalize() + " " + " ".join(ws[1:]) + ".")
    return " ".join(out)


def paragraphs(n: int, seed: int = 0, per_paragraph: int = 5) -> str:
    return "\n\n".join(sentences(per_paragraph, seed=seed * 1000 + i) for i in range(n))


# -- PDF ----------------------------------------------------------------------------


def _pdf_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf_bytes(pages: Sequence[Sequence[str]], title: str | None = None) -> bytes:
    """A valid PDF with one page per item of ``pages``; each page shows its lines in Helvetica.

    Lines must be Latin-1 text. ``title`` goes into the document information dictionary.
    """
    n = len(pages)
    font_obj = 3 + 2 * n
    info_obj = font_obj + 1 if title is not None else None
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: (
            "<< /Type /Pages /Kids [" + " ".join(f"{3 + 2 * i} 0 R" for i in range(n)) + f"] /Count {n} >>"
        ).encode(),
        font_obj: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    for i, lines in enumerate(pages):
        page_obj, content_obj = 3 + 2 * i, 4 + 2 * i
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 760 Td"]
        for line in lines:
            ops.append(f"({_pdf_escape(line)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects[page_obj] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font_obj} 0 R >> >> /Contents {content_obj} 0 R >>"
        ).encode()
        objects[content_obj] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    if info_obj is not None and title is not None:
        objects[info_obj] = f"<< /Title ({_pdf_escape(title)}) /Producer (ragline tests) >>".encode("latin-1")

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += b"%d 0 obj\n" % num + objects[num] + b"\nendobj\n"
    xref_at = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n" % size
    out += b"0000000000 65535 f \n"
    for num in range(1, size):
        out += b"%010d 00000 n \n" % offsets[num]
    trailer = f"<< /Size {size} /Root 1 0 R" + (f" /Info {info_obj} 0 R" if info_obj else "") + " >>"
    out += b"trailer\n" + trailer.encode() + b"\nstartxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


def write_pdf(path: Path, pages: Sequence[Sequence[str]], title: str | None = None) -> Path:
    path.write_bytes(pdf_bytes(pages, title))
    return path


def write_encrypted_pdf(path: Path, pages: Sequence[Sequence[str]], password: str = "s3cret") -> Path:
    """A PDF that needs ``password`` to open (pypdf's standard security handler)."""
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(pdf_bytes(pages))).pages:
        writer.add_page(page)
    writer.encrypt(user_password=password, owner_password=password + "-owner")
    with path.open("wb") as fh:
        writer.write(fh)
    return path


# -- DOCX ---------------------------------------------------------------------------

DocxBlock = tuple[str, Any]  # ("title"|"h1".."h6"|"p", text) or ("table", rows)


def write_docx(path: Path, blocks: Iterable[DocxBlock]) -> Path:
    """Write a DOCX whose body is ``blocks`` in order, using Word's built-in styles."""
    import docx

    document = docx.Document()
    for kind, value in blocks:
        if kind == "title":
            document.add_heading(value, level=0)  # the "Title" style
        elif kind.startswith("h"):
            document.add_heading(value, level=int(kind[1:]))
        elif kind == "p":
            document.add_paragraph(value)
        elif kind == "table":
            rows = list(value)
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = str(cell)
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    document.save(str(path))
    return path


# -- text formats -------------------------------------------------------------------


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: Iterable[dict[str, Any] | str]) -> Path:
    """One line per record; a ``str`` record is written verbatim (to make bad lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_junk(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """Random bytes (with NULs and invalid UTF-8): what a binary file looks like."""
    path.write_bytes(random.Random(seed).randbytes(size))
    return path
