"""Placeholder until the measured matcher lands: a plain cosine threshold (no second check)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MatchVerdict:
    hit: bool
    similarity: float
    reason: str | None


class QuestionMatcher:
    def __init__(self, *, threshold: float = 0.96, check: bool = True) -> None:
        self.threshold = threshold
        self.check = check

    def judge(self, query: str, candidate: str, similarity: float) -> MatchVerdict:
        return MatchVerdict(similarity >= self.threshold, similarity, None)
