"""The RAG prompt: numbered sources within a token budget, and the grounding instructions."""

from __future__ import annotations

from collections.abc import Sequence

from ragline.types import Hit

NOT_FOUND = "Not found in the provided documents."

SYSTEM = (
    "You are a careful assistant. Answer the question using only the numbered sources. "
    "After each sentence, cite the source it comes from as [n]. "
    f'If the sources do not contain the answer, reply exactly: "{NOT_FOUND}"'
)


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


def build_messages(question: str, sources: Sequence[Hit]) -> list[dict[str, str]]:
    blocks = [f"[{i}] {source_label(h)}\n{h.text}" for i, h in enumerate(sources, start=1)]
    user = "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}\nAnswer (cite sources as [n]):"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
