"""Per-key model allow-lists: exact model names, and ``rag/<glob>`` patterns for collections."""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

_GLOB_CHARS = re.compile(r"[*?\[\]]")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@*?\[\]-]{0,199}$")


def check_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """Validate an allow-list (ValueError naming the bad entry); returns it as a tuple, deduplicated."""
    out: list[str] = []
    for p in patterns:
        p = p.strip()
        if not _NAME.match(p):
            raise ValueError(f"model pattern {p!r}: use a model name or rag/<collection pattern>")
        if _GLOB_CHARS.search(p) and not p.startswith("rag/"):
            raise ValueError(
                f"model pattern {p!r}: wildcards are only for collections (rag/<pattern>, e.g. rag/team-*)"
            )
        if p not in out:
            out.append(p)
    return tuple(out)


def model_allowed(patterns: tuple[str, ...] | None, model: str) -> bool:
    """Whether ``model`` is on the allow-list (None allows every model)."""
    if patterns is None:
        return True
    for p in patterns:
        if p == model:
            return True
        if p.startswith("rag/") and model.startswith("rag/") and fnmatchcase(model, p):
            return True
    return False
