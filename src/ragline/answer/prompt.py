"""The RAG prompt: numbered sources within a token budget, and the grounding instructions.

The default model (SmolLM2-135M) mostly copies what it is given, so the prompt is shaped for
that (measured on questions about ragline's own docs): the question comes first and again at
the end, each source shows only its sentences most similar to the question (``excerpts``), and
hard-wrapped lines are joined so copied text reads as prose.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ragline.answer.citations import split_sentences
from ragline.embed.base import Embedder
from ragline.types import Hit

NOT_FOUND = "Not found in the provided documents."

SYSTEM = "You answer questions using only the numbered sources you are given."

#: Excerpt sentences must reach this share of the best sentence's similarity to the question.
EXCERPT_MIN_RATIO = 0.6

# A line break inside a paragraph (not before a list item) is a hard wrap.
_WRAP = re.compile(r"(?<=\S)\n(?!\n|\s*(?:[-*\u2022]|\d+[.)])\s)")


def flow(text: str) -> str:
    """Join hard-wrapped lines (PDF pages, wrapped Markdown); paragraphs and list items stay."""
    return _WRAP.sub(" ", text)


def select_sources(hits: Sequence[Hit], budget_tokens: int) -> list[Hit]:
    """The best hits first, as many as fit in the budget (the first always fits, trimmed if needed)."""
    chosen: list[Hit] = []
    used = 0
    for h in hits:
        n = int(h.payload.get("n_tokens") or max(1, len(h.text) // 4))
        if chosen and used + n > budget_tokens:
            break
        chosen.append(h)
        used += n
    return chosen


def source_label(hit: Hit) -> str:
    parts = [hit.title or hit.doc_id]
    if hit.section:
        parts.append(hit.section)
    if hit.page is not None:
        parts.append(f"page {hit.page}")
    return " — ".join(parts)


def source_sentences(
    sources: Sequence[Hit], min_words: int = 4, *, once: bool = True
) -> list[tuple[int, int, str]]:
    """(source index, sentence index, sentence) for each sentence of at least ``min_words`` words,
    sources in rank order. With ``once``, a sentence already taken from a better source (or
    contained in one taken) is skipped: neighbouring chunks overlap, and their windows more so,
    and an extractive answer must not quote the same sentence twice."""
    out: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for i, h in enumerate(sources):
        for j, s in enumerate(split_sentences(flow(h.text))):
            if len(s.split()) < min_words:
                continue
            key = " ".join(s.split())
            if once and (key in seen or any(key in other for other in seen)):
                continue
            seen.add(key)
            out.append((i, j, s))
    return out


def excerpts(
    query_vector: npt.NDArray[np.float32], sources: Sequence[Hit], embedder: Embedder, sentences: int
) -> list[str]:
    """For each source, its sentences among the ``sentences`` most similar to the question, in
    document order ("" for a source with none of them). A sentence much less similar than the
    best one (below ``EXCERPT_MIN_RATIO`` of its similarity) is left out: it is more often noise
    the model copies than context it needs."""
    # Every copy of a sentence stays a candidate: the small model copies a sentence it sees under
    # two sources more faithfully (taking each once lowered XQuAD "contains" 0.46 -> 0.38 and
    # COVID-QA 0.22 -> 0.12, docs/BENCHMARKS.md "RAG answers").
    candidates = source_sentences(sources, once=False)
    if not candidates:
        return [flow(h.text) for h in sources]
    sims = embedder.embed_documents([s for _, _, s in candidates]) @ query_vector
    top = np.argsort(-sims)[:sentences].tolist()
    floor = EXCERPT_MIN_RATIO * float(sims[top[0]])
    best = sorted((t for t in top if t == top[0] or float(sims[t]) >= floor), key=lambda t: candidates[t][:2])
    out = [""] * len(sources)
    for t in best:
        i, _, s = candidates[t]
        out[i] = f"{out[i]} {s}".strip()
    return out


def build_messages(
    question: str, sources: Sequence[Hit], texts: Sequence[str] | None = None, notes: Sequence[str] = ()
) -> list[dict[str, str]]:
    """Chat messages for a grounded answer; ``texts`` replace the sources' texts (excerpts);
    ``notes``: tools' results (an agentic answer's), shown after the sources."""
    bodies = list(texts) if texts is not None else [flow(h.text) for h in sources]
    blocks = [f"[{i}] {t}" for i, t in enumerate(bodies, start=1) if t]
    results = "\n\nTool results:\n" + "\n".join(f"- {n}" for n in notes) if notes else ""
    user = (
        f"Question: {question}\n\nSources:\n"
        + "\n\n".join(blocks)
        + results
        + f'\n\nUsing only the sources, answer the question "{question}" in one or two sentences. '
        "End each sentence with the number of its source, like [1]. "
        f'If the sources do not answer it, reply exactly: "{NOT_FOUND}"'
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
