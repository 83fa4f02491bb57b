"""Rule-based routing: send a request to a model group by task type, prompt size or cost tier.

Rules are checked in order; the first whose conditions all hold names the group. A rule
may be limited to one requested model name; a name that only rules mention is a
*virtual model* (e.g. ``auto``) that exists to be routed. Signals come from request
headers (``x-ragline-task``, ``x-ragline-tier``) and from the prompt's size, measured in
characters and estimated tokens (characters / 4, the usual rule of thumb for English with
BPE tokenizers; cheap and tokenizer-free, good enough to tell short from long).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TASK_HEADER = "x-ragline-task"
TIER_HEADER = "x-ragline-tier"
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Rule:
    group: str
    model: str | None = None
    tasks: frozenset[str] | None = None
    tiers: frozenset[str] | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None

    @property
    def needs_size(self) -> bool:
        return any(v is not None for v in (self.min_chars, self.max_chars, self.min_tokens, self.max_tokens))

    def matches(self, model: str, task: str | None, tier: str | None, size: tuple[int, int] | None) -> bool:
        if self.model is not None and self.model != model:
            return False
        if self.tasks is not None and task not in self.tasks:
            return False
        if self.tiers is not None and tier not in self.tiers:
            return False
        if size is not None:
            chars, tokens = size
            if self.min_chars is not None and chars < self.min_chars:
                return False
            if self.max_chars is not None and chars > self.max_chars:
                return False
            if self.min_tokens is not None and tokens < self.min_tokens:
                return False
            if self.max_tokens is not None and tokens > self.max_tokens:
                return False
        return True


def prompt_size(body: Mapping[str, Any]) -> tuple[int, int]:
    """(characters, estimated tokens) of the text in the request's messages."""
    chars = 0
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return chars, -(-chars // CHARS_PER_TOKEN)


class RuleSet:
    def __init__(self, rules: Sequence[Rule], groups: Sequence[str]) -> None:
        self._rules = tuple(rules)
        known = set(groups)
        #: Names only rules know (they need a catch-all rule; settings validation enforces it).
        self.virtual_models = tuple(
            dict.fromkeys(r.model for r in self._rules if r.model is not None and r.model not in known)
        )

    def __bool__(self) -> bool:
        return bool(self._rules)

    def route(self, model: str, headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
        """The group a request for ``model`` goes to, or None when no rule matches."""
        task = _header(headers, TASK_HEADER)
        tier = _header(headers, TIER_HEADER)
        size: tuple[int, int] | None = None
        for rule in self._rules:
            if rule.needs_size and size is None and (rule.model is None or rule.model == model):
                size = prompt_size(body)
            if rule.matches(model, task, tier, size if rule.needs_size else None):
                return rule.group
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value.strip().lower() or None if value else None
