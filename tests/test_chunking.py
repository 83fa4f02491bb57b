"""Chunking: every chunk fits the embedding model (nothing is ever truncated), respects
chunk_tokens, overlaps its neighbour when configured, and no text is lost.

Token counts come from the real embedding model's tokenizer (the session ``embedder``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from fixtures import VOCAB, write_text
from ragline import Engine
from ragline.embed.onnx import OnnxEmbedder
from ragline.ingest.chunking import Chunker, chunk_id_for
from ragline.types import Chunk, ParsedDocument, Section

# -- helpers ------------------------------------------------------------------------------


def unique_words(n: int, start: int = 0) -> list[str]:
    """Distinct words (``river0``, ``mountain1``, ...) so a word's position in the source is unambiguous."""
    return [f"{VOCAB[i % len(VOCAB)]}{i}" for i in range(start, start + n)]


def prose(n_paragraphs: int, sentences_per_paragraph: int, words_per_sentence: int, start: int = 0) -> str:
    """Paragraphs of sentences built from unique words."""
    paras, i = [], start
    for _ in range(n_paragraphs):
        sents = []
        for _ in range(sentences_per_paragraph):
            ws = unique_words(words_per_sentence, i)
            i += words_per_sentence
            sents.append(ws[0].capitalize() + " " + " ".join(ws[1:]) + ".")
        paras.append(" ".join(sents))
    return "\n\n".join(paras)


def make_doc(text: str, title: str = "Doc", heading_path: Sequence[str] = ()) -> ParsedDocument:
    return ParsedDocument("doc", "mem://doc", title, [Section(text, heading_path=list(heading_path))])


def assert_fits(chunks: Sequence[Chunk], embedder: OnnxEmbedder, chunk_tokens: int) -> None:
    """The embedder reads every token of every chunk, and chunk text respects chunk_tokens."""
    assert chunks
    capacity = embedder.max_tokens - 2  # [CLS] and [SEP]
    full = embedder.count_tokens([c.embedding_text() for c in chunks])
    body = embedder.count_tokens([c.text for c in chunks])
    for c, n_full, n_body in zip(chunks, full, body, strict=True):
        assert n_full <= capacity, f"chunk {c.index} would be truncated: {n_full} > {capacity}"
        assert n_body <= chunk_tokens, f"chunk {c.index} has {n_body} > chunk_tokens={chunk_tokens}"
        assert c.n_tokens == n_body
    assert [c.index for c in chunks] == list(range(len(chunks)))


def word_spans(chunks: Sequence[Chunk], source: Sequence[str]) -> list[tuple[int, int]]:
    """Each chunk must be a contiguous run source[a:b] of the source's (unique) words; returns the runs."""
    pos = {w: i for i, w in enumerate(source)}
    spans = []
    for c in chunks:
        ws = c.text.split()
        assert ws, f"empty chunk {c.index}"
        a = pos[ws[0]]
        assert ws == list(source[a : a + len(ws)]), f"chunk {c.index} is not a contiguous run of the source"
        spans.append((a, a + len(ws)))
    return spans


def assert_no_text_lost(spans: Sequence[tuple[int, int]], n_words: int) -> None:
    assert spans[0][0] == 0
    assert spans[-1][1] == n_words
    for (_, prev_end), (start, end) in itertools.pairwise(spans):
        assert start <= prev_end, f"words {prev_end}..{start} are in no chunk"
        assert end > prev_end, "a chunk adds nothing new"


def assert_chars_covered(chunks: Sequence[Chunk], text: str) -> None:
    """Ignoring whitespace, the chunks in order are pieces of the text that together cover all of it."""
    src = "".join(text.split())
    covered = 0  # src[:covered] is in some chunk
    for c in chunks:
        piece = "".join(c.text.split())
        at = src.rfind(piece, 0, covered + len(piece))  # the latest placement that leaves no gap
        assert at >= 0, f"chunk {c.index} is not a contiguous piece of the text, or a gap precedes it"
        covered = max(covered, at + len(piece))
    assert covered == len(src), f"the text after character {covered} is in no chunk"


def overlaps(spans: Sequence[tuple[int, int]]) -> list[int]:
    """Words shared by each pair of consecutive chunks."""
    return [prev_end - start for (_, prev_end), (start, _) in itertools.pairwise(spans)]


def chunker(embedder: OnnxEmbedder, chunk_tokens: int = 200, overlap_tokens: int = 32) -> Chunker:
    return Chunker(embedder, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)


# -- size bounds, coverage and overlap ----------------------------------------------------


@pytest.mark.parametrize(
    ("chunk_tokens", "overlap_tokens", "sentences", "words_per_sentence"),
    [
        (64, 16, 6, 12),  # paragraphs larger than a chunk: split into sentences
        (200, 32, 4, 10),  # paragraphs smaller than a chunk: packed whole
        (128, 0, 5, 12),  # no overlap configured
        (1000, 32, 6, 12),  # more than the model reads: clamped to the model
    ],
)
def test_paragraph_prose(
    embedder: OnnxEmbedder, chunk_tokens: int, overlap_tokens: int, sentences: int, words_per_sentence: int
) -> None:
    text = prose(24, sentences, words_per_sentence)
    source = text.split()
    chunks = chunker(embedder, chunk_tokens, overlap_tokens).chunk(make_doc(text), "v1")
    assert len(chunks) > 2
    assert_fits(chunks, embedder, chunk_tokens)
    spans = word_spans(chunks, source)
    assert_no_text_lost(spans, len(source))
    shared = overlaps(spans)
    if overlap_tokens == 0:
        assert all(n == 0 for n in shared), "chunks overlap although overlap_tokens=0"
    else:
        budget = min(chunk_tokens, embedder.max_tokens - 2 - embedder.count_tokens(["Doc"])[0])
        for c, nxt, n in zip(chunks, chunks[1:], shared, strict=False):
            if n == 0:  # allowed only where the next chunk leaves no room for an overlap
                assert nxt.n_tokens + overlap_tokens > budget, (
                    f"chunks {c.index} and {nxt.index} share no text"
                )
                continue
            carried = " ".join(nxt.text.split()[:n])
            assert embedder.count_tokens([carried])[0] <= overlap_tokens
            assert c.text.split()[-n:] == nxt.text.split()[:n]
        assert sum(n > 0 for n in shared) >= 0.8 * len(shared)


def test_huge_paragraph_without_punctuation(embedder: OnnxEmbedder) -> None:
    source = unique_words(3000)
    chunks = chunker(embedder, 200, 32).chunk(make_doc(" ".join(source)), "v1")
    assert_fits(chunks, embedder, 200)
    spans = word_spans(chunks, source)
    assert_no_text_lost(spans, len(source))
    assert all(n > 0 for n in overlaps(spans))
    # chunks are filled up, not cut at a fraction of the budget
    assert sum(c.n_tokens for c in chunks[:-1]) / (len(chunks) - 1) > 150


def test_lines_without_blank_lines_or_sentences(embedder: OnnxEmbedder) -> None:
    source = unique_words(1200)
    text = "\n".join(" ".join(source[i : i + 7]) for i in range(0, len(source), 7))  # a list of lines
    chunks = chunker(embedder, 100, 20).chunk(make_doc(text), "v1")
    assert_fits(chunks, embedder, 100)
    spans = word_spans(chunks, source)
    assert_no_text_lost(spans, len(source))
    assert all(n > 0 for n in overlaps(spans))


@pytest.mark.parametrize(
    "word",
    [
        "a" * 5000,  # one [UNK] for the tokenizer
        ("ab." * 1700)[:5000],  # punctuation splits it into thousands of tokens
        "".join(chr(0x4E00 + i % 700) for i in range(5000)),  # CJK: one token per character
        ("0123456789" * 500),  # digits
    ],
    ids=["letters", "punctuated", "cjk", "digits"],
)
@pytest.mark.parametrize("overlap_tokens", [0, 32])
def test_single_5000_character_word(embedder: OnnxEmbedder, word: str, overlap_tokens: int) -> None:
    assert len(word) == 5000
    text = f"Before the blob.\n\n{word}\n\nAfter the blob."
    chunks = chunker(embedder, 200, overlap_tokens).chunk(make_doc(text), "v1")
    assert_fits(chunks, embedder, 200)
    assert_chars_covered(chunks, text)
    if overlap_tokens == 0:
        joined = "".join("".join(c.text.split()) for c in chunks)
        assert joined == "".join(text.split()), "text was lost or repeated"
    assert "Before the blob." in chunks[0].text and "After the blob." in chunks[-1].text


def test_long_title_and_headings_leave_room_for_text(embedder: OnnxEmbedder) -> None:
    title = " ".join(unique_words(400, start=50_000))
    headings = [" ".join(unique_words(300, start=60_000)), "x" * 3000, ("sub." * 900)]
    text = prose(6, 5, 12)
    source = text.split()
    for chunk_tokens in (64, 200, 1000):
        chunks = chunker(embedder, chunk_tokens, 16).chunk(make_doc(text, title, headings), "v1")
        assert_fits(chunks, embedder, chunk_tokens)
        assert_no_text_lost(word_spans(chunks, source), len(source))
        for c in chunks:
            header = embedder.count_tokens([" — ".join(p for p in (c.title, c.section) if p)])[0]
            assert header <= 48  # the default max_header_tokens
            assert c.title and title.startswith(c.title.rstrip("…").rstrip())
            assert embedder.count_tokens([c.text])[0] >= 8 or c is chunks[-1]


def test_single_word_title_of_5000_characters(embedder: OnnxEmbedder) -> None:
    title = ("title-" * 900)[:5000]
    text = prose(4, 5, 12)
    chunks = chunker(embedder).chunk(make_doc(text, title, ["Intro"]), "v1")
    assert_fits(chunks, embedder, 200)
    assert_no_text_lost(word_spans(chunks, text.split()), len(text.split()))


class _SmallWindow:
    """The real tokenizer, but a model that reads only 64 word pieces."""

    def __init__(self, embedder: OnnxEmbedder) -> None:
        self._e = embedder

    @property
    def max_tokens(self) -> int:
        return 64

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._e.count_tokens(texts)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return self._e.token_offsets(text)


def test_small_model_window_clamps_chunk_size(embedder: OnnxEmbedder) -> None:
    small = _SmallWindow(embedder)
    text = prose(10, 5, 12)
    doc = make_doc(text, "A title " * 30, ["Heading " * 30])
    chunks = Chunker(small, chunk_tokens=200, overlap_tokens=16, max_header_tokens=16).chunk(doc, "v1")
    for c in chunks:
        assert embedder.count_tokens([c.embedding_text()])[0] <= 62
    assert_no_text_lost(word_spans(chunks, text.split()), len(text.split()))
    with pytest.raises(ValueError, match="max_header_tokens"):
        Chunker(small, chunk_tokens=200, overlap_tokens=16, max_header_tokens=56)


# -- structure ----------------------------------------------------------------------------


def test_chunks_never_straddle_sections_and_keep_their_page(embedder: OnnxEmbedder) -> None:
    doc = ParsedDocument(
        "doc",
        "mem://doc.pdf",
        "Manual",
        [
            Section(prose(3, 5, 12, start=0), heading_path=["Manual", "Setup"], page=1),
            Section(prose(3, 5, 12, start=10_000), heading_path=["Manual", "Setup", "Linux"], page=2),
            Section("Short last page.", heading_path=["Appendix"], page=3),
        ],
    )
    chunks = chunker(embedder, 64, 16).chunk(doc, "v1")
    assert_fits(chunks, embedder, 64)
    by_page: dict[int, list[Chunk]] = {}
    for c in chunks:
        assert c.page is not None
        by_page.setdefault(c.page, []).append(c)
    assert sorted(by_page) == [1, 2, 3]
    for page, section_text in ((1, doc.sections[0].text), (2, doc.sections[1].text)):
        src = section_text.split()
        assert_no_text_lost(word_spans(by_page[page], src), len(src))
    # the title is not repeated in the section path
    assert {c.section for c in by_page[1]} == {"Setup"}
    assert {c.section for c in by_page[2]} == {"Setup > Linux"}
    assert {c.section for c in by_page[3]} == {"Appendix"}
    assert all(c.title == "Manual" for c in chunks)
    assert chunks[0].embedding_text().startswith("Manual — Setup\n")


def test_chunk_ids_are_deterministic_per_version(embedder: OnnxEmbedder) -> None:
    doc = make_doc(prose(4, 5, 12))
    a = chunker(embedder, 64, 16).chunk(doc, "v1")
    b = chunker(embedder, 64, 16).chunk(doc, "v1")
    c = chunker(embedder, 64, 16).chunk(doc, "v2")
    assert [x.chunk_id for x in a] == [x.chunk_id for x in b]
    assert not {x.chunk_id for x in a} & {x.chunk_id for x in c}
    assert a[0].chunk_id == chunk_id_for("doc", "v1", 0)
    assert len({x.chunk_id for x in a}) == len(a)


def test_empty_sections_yield_no_chunks(embedder: OnnxEmbedder) -> None:
    doc = ParsedDocument("d", "s", "T", [Section("   \n\n "), Section("Real text here.")])
    chunks = chunker(embedder).chunk(doc, "v1")
    assert [c.text for c in chunks] == ["Real text here."]


# -- through the engine -------------------------------------------------------------------


def test_ingested_chunks_fit_the_model(
    tmp_path: Path, make_engine: Callable[..., Engine], embedder: OnnxEmbedder
) -> None:
    """End to end: a Markdown file with a huge title, huge headings and a huge paragraph."""
    title = " ".join(unique_words(120, start=70_000))
    heading = " ".join(unique_words(150, start=80_000))
    body = " ".join(unique_words(500))
    md = f"# {title}\n\n## {heading}\n\n{body}\n\n### {'y' * 2000}\n\n{prose(2, 4, 10, start=5000)}\n"
    path = write_text(tmp_path / "huge.md", md)
    eng = make_engine(chunking={"chunk_tokens": 180, "overlap_tokens": 24})
    report = eng.ingest([path])
    assert report.failed == [] and report.added == 1
    hits = eng.search("river mountain", top_k=1000, mode="dense")
    assert len(hits) == report.chunks
    capacity = embedder.max_tokens - 2
    for h in hits:
        head = " — ".join(p for p in (h.title, h.section) if p)
        full = f"{head}\n{h.text}" if head else h.text
        assert embedder.count_tokens([full])[0] <= capacity
        assert embedder.count_tokens([h.text])[0] <= 180
        assert h.payload["n_tokens"] == embedder.count_tokens([h.text])[0]
    words_in_chunks = {w for h in hits for w in h.text.split()}
    assert set(body.split()) <= words_in_chunks


# -- lexical context (what BM25 indexes beside the chunk) -----------------------------------


@pytest.mark.parametrize("context_tokens", [0, 16, 48])
def test_lexical_context_widens_each_chunk_within_its_section(
    embedder: OnnxEmbedder, context_tokens: int
) -> None:
    doc = ParsedDocument(
        "doc",
        "mem://doc",
        "Doc",
        [
            Section(prose(4, 5, 12, start=0), heading_path=["A"]),
            Section(prose(2, 5, 12, start=20_000), heading_path=["B"]),
        ],
    )
    plain = Chunker(embedder, 64, 16).chunk(doc, "v1")
    wide = Chunker(embedder, 64, 16, lexical_context_tokens=context_tokens).chunk(doc, "v1")

    # the chunks themselves (what is embedded and returned) do not change
    def key(c: Chunk) -> tuple[str, str, int]:
        return c.chunk_id, c.text, c.n_tokens

    assert [key(c) for c in wide] == [key(c) for c in plain]
    for c in wide:
        section = doc.sections[0] if c.section == "A" else doc.sections[1]
        src = section.text.split()
        if context_tokens == 0:
            assert c.context == "" and c.lexical_text() == c.embedding_text()
            continue
        body = c.context or c.text
        # a contiguous run of the section's words that holds the chunk ...
        (a, b) = word_spans([Chunk("x", "d", 0, body, "", "", None, 0)], src)[0]
        (ca, cb) = word_spans([c], src)[0]
        assert a <= ca and cb <= b
        # ... widened by context_tokens on each side where the section goes on (give or take the
        # word pieces of the one word at each edge, which is kept whole)
        before = embedder.count_tokens([" ".join(src[a:ca])])[0] if a < ca else 0
        after = embedder.count_tokens([" ".join(src[cb:b])])[0] if cb < b else 0
        assert before <= context_tokens + 4 and after <= context_tokens + 4
        if ca > 0:
            assert before >= context_tokens - 2 or a == 0
        if cb < len(src):
            assert after >= context_tokens - 2 or b == len(src)
        assert c.lexical_text().startswith(f"Doc — {c.section}\n")


def test_bm25_finds_a_chunk_by_a_word_of_its_lexical_context(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    """A query word that sits just outside a chunk still finds that chunk by BM25 when the chunk's
    lexical context reaches it; the hit's text stays the chunk itself."""
    words = unique_words(400)
    path = write_text(tmp_path / "doc.txt", " ".join(words))
    engines = {}
    for context in (0, 32):
        eng = make_engine(
            data_dir=tmp_path / f"data{context}",
            chunking={"chunk_tokens": 64, "overlap_tokens": 0, "lexical_context_tokens": context},
        )
        eng.ingest([path])
        engines[context] = eng
    first = engines[0].search(words[0], top_k=10, mode="bm25")
    assert len(first) == 1 and first[0].payload["chunk_index"] == 0
    edge = first[0].text.split()[-1]  # the last word of chunk 0; chunk 1 starts right after it
    plain = engines[0].search(edge, top_k=10, mode="bm25")
    wide = engines[32].search(edge, top_k=10, mode="bm25")
    # without context only chunk 0 holds the word; with it, chunk 1 (whose context reaches back
    # 32 tokens) is found too, behind the chunk that holds the word itself
    assert [h.payload["chunk_index"] for h in plain] == [0]
    assert [h.payload["chunk_index"] for h in wide] == [0, 1]
    # the hit is still the chunk itself (the context is only indexed): chunk 1 starts after the word
    assert edge not in wide[1].text.split()
    assert wide[1].text.split()[0] == words[words.index(edge) + 1]
    assert wide[1].payload["n_tokens"] <= 64


def test_title_weight_makes_a_title_match_outrank_a_body_match(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    """With chunking.lexical_title_weight 2 BM25 counts the title twice: a document about the
    query word (it is in its title) outranks one that mentions it once in passing."""
    filler = " ".join(unique_words(30, start=1000))  # one chunk per document
    other = " ".join(unique_words(30, start=2000))  # distinct text: not a near-duplicate
    titled = write_text(tmp_path / "a.md", f"# Zebra habitats\n\n{filler} grasslands.\n")
    passing = write_text(tmp_path / "b.md", f"# Savanna notes\n\n{other} zebra.\n")
    scores = {}
    for weight in (1, 2):
        eng = make_engine(data_dir=tmp_path / f"w{weight}", chunking={"lexical_title_weight": weight})
        eng.ingest([titled, passing])
        hits = eng.search("zebra", top_k=5, mode="bm25")
        assert {h.title for h in hits} == {"Zebra habitats", "Savanna notes"}
        by_title = {h.title: h.score for h in hits}
        scores[weight] = by_title["Zebra habitats"] / by_title["Savanna notes"]
        if weight == 2:
            assert hits[0].title == "Zebra habitats"
            assert hits[0].text.split()[0] == filler.split()[0]  # the hit is the chunk, no repeated title
    assert scores[2] > scores[1] * 1.2


def test_lexical_text_counts_the_title_as_often_as_asked() -> None:
    c = Chunk("id", "d", 0, "body words", "The Title", "Part", None, 2, context="before body words after")
    assert c.lexical_text() == "The Title — Part\nbefore body words after"
    assert c.lexical_text(3) == "The Title\nThe Title\nThe Title — Part\nbefore body words after"
    assert c.embedding_text() == "The Title — Part\nbody words"
    untitled = Chunk("id", "d", 0, "body", "", "", None, 1)
    assert untitled.lexical_text(2) == "body"
