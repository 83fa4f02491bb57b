"""Citation parsing and attribution of answer sentences to sources."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ragline.embed.base import Embedder
from ragline.types import Citation, Hit

_CITE = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_SENT = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text.strip()) if s.strip()]


def cited_numbers(text: str) -> list[int]:
    out: list[int] = []
    for m in _CITE.finditer(text):
        for n in re.split(r"\s*[,;]\s*", m.group(1)):
            if n.isdigit() and int(n) not in out:
                out.append(int(n))
    return out


def strip_invalid(text: str, n_sources: int) -> str:
    """Drop citation markers that point at no source (models invent [7] for 3 sources)."""

    def fix(m: re.Match[str]) -> str:
        nums = [n for n in re.split(r"\s*[,;]\s*", m.group(1)) if n.isdigit() and 1 <= int(n) <= n_sources]
        return f"[{', '.join(nums)}]" if nums else ""

    text = re.sub(r"\s*\[(?:n|N|\d+\s*-\s*\d+|source|Source)\]", "", text)  # template echoes like [n]
    return _CITE.sub(fix, text)


_ECHO = re.compile(r"^(?:Question|Sources?|Answer)\s*:", re.I)
_ANSWER = re.compile(r"^Answer\s*:\s*", re.I)
_MARKS = re.compile(r"\[\s*\d*(?:\s*[,;]\s*\d+)*\s*\]?")  # [1], [1, 2], and a cut-off "[3"


def tidy(text: str) -> str:
    """Clean a small model's habits: drop lines that hold only citation markers or echo the
    prompt ("Question: ...", "Sources:"), and stop at the first sentence said a second time."""
    out: list[str] = []
    seen: set[str] = set()
    for line in text.split("\n"):
        s = line.strip()
        if not s:
            out.append("")
            continue
        if _ECHO.match(s):
            if not _ANSWER.match(s):
                continue
            s = _ANSWER.sub("", s)
        if not re.search(r"\w", _MARKS.sub("", s)):  # only markers and punctuation
            continue
        kept: list[str] = []
        repeated = False
        for sentence in split_sentences(s):
            key = _CITE.sub("", sentence).strip().lower()
            if key and key in seen:
                repeated = True
                break
            seen.add(key)
            kept.append(sentence)
        if kept:
            out.append(" ".join(kept))
        if repeated:
            break
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def make_citation(number: int, hit: Hit, inferred: bool = False) -> Citation:
    return Citation(
        number=number,
        chunk_id=hit.chunk_id,
        doc_id=hit.doc_id,
        title=hit.title,
        section=hit.section,
        page=hit.page,
        source=str(hit.payload.get("source", "")),
        snippet=hit.text[:240],
        inferred=inferred,
    )


def attribute(
    text: str, sources: Sequence[Hit], embedder: Embedder, min_similarity: float
) -> tuple[str, set[int]]:
    """Append [n] to each uncited sentence whose best-matching source is similar enough.

    Returns the new text and the numbers that were inferred this way.
    """
    sentences = split_sentences(text)
    todo = [i for i, s in enumerate(sentences) if not _CITE.search(s) and len(s.split()) >= 3]
    if not todo or not sources:
        return text, set()
    sv = embedder.embed_documents([sentences[i] for i in todo])
    cv = embedder.embed_documents([h.text for h in sources])
    sims = sv @ cv.T
    inferred: set[int] = set()
    for row, i in enumerate(todo):
        j = int(np.argmax(sims[row]))
        if float(sims[row, j]) >= min_similarity:
            s = sentences[i]
            if s and s[-1] in ".!?":
                sentences[i] = f"{s[:-1]} [{j + 1}]{s[-1]}"
            else:
                sentences[i] = f"{s} [{j + 1}]"
            inferred.add(j + 1)
    return " ".join(sentences), inferred
