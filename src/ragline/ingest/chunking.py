"""Structure-aware recursive chunking, sized in the embedding model's tokens.

Each section (a heading path, or a PDF page) is chunked on its own so a chunk
never straddles two sections. Within a section the text is split recursively
-- paragraphs, lines, sentences, words, and finally token windows -- until each
piece fits, then pieces are packed greedily into chunks with an overlap. The
budget leaves room for the title/section header that is embedded with the
chunk, so no chunk is ever truncated by the embedder.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ragline.config import ChunkingSettings
from ragline.types import Chunk, ParsedDocument

_SENTENCE = re.compile(r"(?<=[.!?;:])\s+(?=[\"'(\[]?[A-Z0-9])")
_LEVELS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\n\s*\n"),  # paragraphs
    re.compile(r"\n"),  # lines
    _SENTENCE,  # sentences
    re.compile(r"\s+"),  # words
)
_SPACE = re.compile(r"\s+")
_JOINERS = ("\n\n", "\n", " ", " ")
CHUNK_NAMESPACE = uuid.UUID("5b3a3c9e-4d0e-4b8a-9f39-2f7c1d7a0e11")
#: Bumped whenever the same settings would cut the same text differently (caches of chunked
#: corpora, such as the eval's scratch indexes, key on it).
CHUNKER_VERSION = 2


class TokenCounter(Protocol):
    @property
    def max_tokens(self) -> int: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def token_offsets(self, text: str) -> list[tuple[int, int]]: ...


@dataclass(slots=True)
class _Piece:
    text: str
    tokens: int
    joiner: str  # how it joins the piece before it
    #: ``tokens`` is the count of ``text`` itself (False for a token window cut out of a longer
    #: text: re-tokenized alone, its first word piece may come out differently)
    exact: bool = True
    #: Where the piece lies in the section text (character offsets; ``text`` is that span).
    start: int = 0
    end: int = 0


@dataclass(slots=True)
class _Cut:
    """A packed chunk: its text, token count, and the section span it was cut from."""

    text: str
    tokens: int
    start: int
    end: int


class _Tokens:
    """A text tokenized once: the count of any whitespace-bounded span comes from the offsets.

    For word-piece tokenizers (BERT's, MiniLM's) no token crosses whitespace, so the tokens that
    lie inside a span are exactly what tokenizing the span alone gives. Other tokenizers may
    differ by a piece at the edges; the packed chunks are counted for real afterwards either way.
    """

    def __init__(self, text: str, offsets: Sequence[tuple[int, int]]) -> None:
        self.text = text
        self.starts = [a for a, _ in offsets]
        self.ends = [b for _, b in offsets]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Index range [i, j) of the tokens that lie inside text[start:end]."""
        return bisect.bisect_left(self.starts, start), bisect.bisect_right(self.ends, end)

    def count(self, start: int, end: int) -> int:
        i, j = self.span(start, end)
        return max(0, j - i)


def _parts(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """The non-empty, whitespace-stripped spans between ``pattern``'s matches in text[start:end]."""
    spans: list[tuple[int, int]] = []
    pos = start
    for m in pattern.finditer(text, start, end):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, end))
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            out.append((s, e))
    return out


def chunk_id_for(doc_id: str, version: str, index: int) -> str:
    """Deterministic point id: the same document version always yields the same ids."""
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{doc_id}\x00{version}\x00{index}"))


class Chunker:
    def __init__(
        self,
        counter: TokenCounter,
        chunk_tokens: int = 200,
        overlap_tokens: int = 32,
        max_header_tokens: int = 48,
        lexical_context_tokens: int = 0,
    ) -> None:
        # [CLS] and [SEP] take two of the model's positions.
        self._capacity = counter.max_tokens - 2
        if max_header_tokens >= self._capacity - 8:
            raise ValueError("max_header_tokens leaves no room for chunk text")
        self._counter = counter
        self._chunk_tokens = chunk_tokens
        self._overlap = overlap_tokens
        self._max_header = max_header_tokens
        self._context = lexical_context_tokens

    @classmethod
    def from_settings(cls, counter: TokenCounter, settings: ChunkingSettings) -> Chunker:
        return cls(
            counter,
            settings.chunk_tokens,
            settings.overlap_tokens,
            settings.max_header_tokens,
            settings.lexical_context_tokens,
        )

    @property
    def capacity(self) -> int:
        return self._capacity

    def chunk(self, doc: ParsedDocument, version: str, max_chunks: int | None = None) -> list[Chunk]:
        """The document's chunks. With ``max_chunks`` it stops after the section that passes that
        many: the caller sees the document is over its cap without chunking the rest of it."""
        chunks: list[Chunk] = []
        for section in doc.sections:
            if max_chunks is not None and len(chunks) > max_chunks:
                break
            path = [h for h in section.heading_path if h]
            if path and path[0] == doc.title:
                path = path[1:]  # the title is already in the header
            heading = " > ".join(path)
            title, heading = self._fit_header(doc.title, heading)
            header_tokens = self._count(_header(title, heading)) if (title or heading) else 0
            budget = max(8, min(self._chunk_tokens, self._capacity - header_tokens))
            overlap = min(self._overlap, budget // 2)
            tokens, cuts = self._split_section(section.text, budget, overlap)
            for cut in cuts:
                idx = len(chunks)
                chunks.append(
                    Chunk(
                        chunk_id=chunk_id_for(doc.doc_id, version, idx),
                        doc_id=doc.doc_id,
                        index=idx,
                        text=cut.text,
                        title=title,
                        section=heading,
                        page=section.page,
                        n_tokens=cut.tokens,
                        metadata={},
                        context=self._lexical_context(tokens, cut),
                    )
                )
        return chunks

    def _lexical_context(self, tok: _Tokens, cut: _Cut) -> str:
        """The chunk's span widened by ``lexical_context_tokens`` tokens of its section on each
        side ("" when there is no context to add): what BM25 indexes for the chunk."""
        if self._context <= 0 or not tok.starts:
            return ""
        i, j = tok.span(cut.start, cut.end)
        a = max(0, min(i, len(tok.starts)) - self._context)
        b = min(len(tok.ends), max(j, a + 1) + self._context)
        start, end = min(tok.starts[a], cut.start), max(tok.ends[b - 1], cut.end)
        text = tok.text
        while start > 0 and not text[start - 1].isspace():  # whole words only
            start -= 1
        while end < len(text) and not text[end].isspace():
            end += 1
        if start >= cut.start and end <= cut.end:
            return ""
        return text[start:end]

    # -- internals -----------------------------------------------------------------

    def _count(self, text: str) -> int:
        return self._counter.count_tokens([text])[0]

    def _truncate(self, text: str, limit: int) -> str:
        offsets = self._counter.token_offsets(text)
        if len(offsets) <= limit:
            return text
        return text[: offsets[limit - 1][1]].rstrip() + "…" if limit > 0 else ""

    def _fit_header(self, title: str, heading: str) -> tuple[str, str]:
        """Shorten title and heading so the header stays within max_header_tokens."""
        if not title and not heading:
            return title, heading
        if self._count(_header(title, heading)) <= self._max_header:
            return title, heading
        half = self._max_header // 2
        title = self._truncate(title, half - 1) if title else title
        rest = self._max_header - (self._count(title) if title else 0) - 2
        heading = self._truncate(heading, max(rest, 0)) if heading else heading
        while heading and self._count(_header(title, heading)) > self._max_header:
            heading = self._truncate(heading, max(self._count(heading) - 4, 0))
        if self._count(_header(title, heading)) > self._max_header:
            heading = ""
            title = self._truncate(title, max(self._max_header - 2, 1))
        return title, heading

    def _split_section(self, text: str, budget: int, overlap: int) -> tuple[_Tokens, list[_Cut]]:
        text = text.strip()
        # one tokenization of the whole section; pieces are counted from its offsets
        tokens = _Tokens(text, self._counter.token_offsets(text) if text else [])
        if not text:
            return tokens, []
        pieces = self._split(tokens, 0, len(text), budget, 0, "")
        return tokens, self._pack(pieces, budget, overlap)

    def _split(
        self, tok: _Tokens, start: int, end: int, budget: int, level: int, joiner: str
    ) -> list[_Piece]:
        n = tok.count(start, end)
        if n <= budget:
            return [_Piece(tok.text[start:end], n, joiner, False, start, end)]
        if level >= len(_LEVELS):
            return self._windows(tok, start, end, budget, joiner)
        parts = _parts(tok.text, start, end, _LEVELS[level])
        if len(parts) <= 1:
            return self._split(tok, start, end, budget, level + 1, joiner)
        out: list[_Piece] = []
        for i, (s, e) in enumerate(parts):
            j = joiner if i == 0 else _JOINERS[level]
            cnt = tok.count(s, e)
            if cnt <= budget:
                out.append(_Piece(tok.text[s:e], cnt, j, False, s, e))
            else:
                out.extend(self._split(tok, s, e, budget, level + 1, j))
        return out

    def _windows(self, tok: _Tokens, start: int, end: int, budget: int, joiner: str) -> list[_Piece]:
        """Cut text[start:end] into windows of ``budget`` tokens (the last resort: one long word)."""
        i, j = tok.span(start, end)
        out: list[_Piece] = []
        for k in range(i, j, budget):
            last = min(k + budget, j) - 1
            a, b = tok.starts[k], tok.ends[last]
            out.append(_Piece(tok.text[a:b], last - k + 1, joiner if k == i else " ", False, a, b))
        return out

    def _token_windows(self, text: str, budget: int, joiner: str) -> list[_Piece]:
        return self._windows(_Tokens(text, self._counter.token_offsets(text)), 0, len(text), budget, joiner)

    def _pack(self, pieces: list[_Piece], budget: int, overlap: int) -> list[_Cut]:
        chunks: list[tuple[_Cut, bool]] = []  # the cut, and whether its token count is exact
        current: list[_Piece] = []
        total = 0
        for piece in pieces:
            if current and total + piece.tokens > budget:
                chunks.append(self._emit(current))
                # carry the tail of this chunk into the next one as overlap
                carried: list[_Piece] = []
                carried_tokens = 0
                for prev in reversed(current):
                    if (
                        carried_tokens + prev.tokens > overlap
                        or carried_tokens + prev.tokens + piece.tokens > budget
                    ):
                        break
                    carried.insert(0, prev)
                    carried_tokens += prev.tokens
                if not carried and overlap > 0:
                    # the last piece alone is longer than the overlap: carry its last words instead
                    tail = self._tail(current[-1], min(overlap, budget - piece.tokens))
                    if tail is not None:
                        carried, carried_tokens = [tail], tail.tokens
                current, total = carried, carried_tokens
            current.append(piece)
            total += piece.tokens
        if current:
            chunks.append(self._emit(current))
        # Counts from offsets, and joins at the seams, may be off by a piece for some tokenizers:
        # count every chunk whose count is not exact for real (one tokenizer call) and re-split
        # any that exceeds the budget.
        estimated = [i for i, (_, exact) in enumerate(chunks) if not exact]
        exact = dict(
            zip(estimated, self._counter.count_tokens([chunks[i][0].text for i in estimated]), strict=True)
        )
        verified: list[_Cut] = []
        for i, (cut, _) in enumerate(chunks):
            n = exact.get(i, cut.tokens)
            if n <= budget:
                cut.tokens = n
                verified.append(cut)
            else:  # windows of the joined text; each keeps the span of the chunk it came from
                windows = self._token_windows(cut.text, budget, "")
                verified.extend(_Cut(p.text, p.tokens, cut.start, cut.end) for p in windows)
        return verified

    def _tail(self, piece: _Piece, limit: int) -> _Piece | None:
        """The last whole words of ``piece`` within ``limit`` tokens; None if not even one word fits."""
        if limit <= 0:
            return None
        text = piece.text
        offsets = self._counter.token_offsets(text)
        if len(offsets) <= limit:
            return None
        start = offsets[len(offsets) - limit][0]
        if start > 0 and not text[start - 1].isspace():  # do not start in the middle of a word
            gap = _SPACE.search(text, start)
            if gap is None:
                return None
            start = gap.end()
        tail = text[start:].strip()
        if not tail:
            return None
        n = self._count(tail)
        lead = len(text[start:]) - len(text[start:].lstrip())
        begin = piece.start + start + lead
        return _Piece(tail, n, "", True, begin, begin + len(tail)) if n <= limit else None

    @staticmethod
    def _emit(pieces: list[_Piece]) -> tuple[_Cut, bool]:
        parts = [pieces[0].text]
        for p in pieces[1:]:
            parts.append(p.joiner or " ")
            parts.append(p.text)
        cut = _Cut("".join(parts), sum(p.tokens for p in pieces), pieces[0].start, pieces[-1].end)
        return cut, len(pieces) == 1 and pieces[0].exact


def _header(title: str, heading: str) -> str:
    return " — ".join(p for p in (title, heading) if p)


def content_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).lower().encode("utf-8")).hexdigest()
