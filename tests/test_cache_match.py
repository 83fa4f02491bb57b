"""The semantic cache's second check (ragline.cache.match), with the shipped MiniLM's similarities.

The QQP figures themselves come from bench/cache_precision.py (docs/BENCHMARKS.md, "Semantic cache
precision"); these tests pin the behaviour each rule promises, on real embeddings where the
similarity matters, and the cost the cache relies on (well under 1 ms per judge).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from ragline.cache.match import DEFAULT_THRESHOLD, MatchVerdict, QuestionMatcher
from ragline.embed.onnx import OnnxEmbedder


def cosine(embedder: OnnxEmbedder, a: str, b: str) -> float:
    va, vb = embedder.embed_queries([a, b])
    return float(np.dot(va, vb))


# Pairs the shipped MiniLM scores at or above the default threshold that ask different things:
# the threshold alone would serve the wrong answer; the check must veto, for the named rule.
SIMILAR_BUT_DIFFERENT = [
    ("What are the best 3 books on Python?", "What are the best 5 books on Python?", "number"),
    ("What are the top ten movies of 2015?", "What are the top ten movies of 2016?", "number"),
    ("Why is Saturn's moon Titan not habitable?", "Why is Saturn's moon Titan habitable?", "negation"),
    ("What is the best way to buy a used car?", "What is the best way to sell a used car?", "opposite"),
    (
        "What are the advantages of living in Canada?",
        "What are the disadvantages of living in Canada?",
        "opposite",
    ),
    ("How do I get a job at Google?", "How do I get a job at Microsoft?", "entity"),
    ("What is the capital of Australia?", "What is the capital of Austria?", "entity"),
]

# Real paraphrases (QQP-style duplicates) above the threshold that the check must let through.
SAME_QUESTION = [
    ("How can I lose weight quickly?", "How can I lose weight fast?"),
    ("What is the best way to learn Python?", "What's the best way to learn Python?"),
    ("How do I improve my English speaking skills?", "How can I improve my English speaking skills?"),
    ("Why do cats purr?", "why do cats purr"),
]


@pytest.mark.parametrize(("query", "candidate", "rule"), SIMILAR_BUT_DIFFERENT)
def test_similar_questions_that_differ_are_vetoed_with_a_reason(
    embedder: OnnxEmbedder, query: str, candidate: str, rule: str
) -> None:
    sim = cosine(embedder, query, candidate)
    assert sim >= DEFAULT_THRESHOLD, f"pair no longer tests the check: cosine {sim:.3f}"
    assert QuestionMatcher(check=False).judge(query, candidate, sim).hit  # the threshold alone
    verdict = QuestionMatcher().judge(query, candidate, sim)
    assert not verdict.hit
    assert verdict.rule == rule
    assert verdict.reason and verdict.similarity == sim


@pytest.mark.parametrize(("query", "candidate"), SAME_QUESTION)
def test_paraphrases_above_the_threshold_hit(embedder: OnnxEmbedder, query: str, candidate: str) -> None:
    sim = cosine(embedder, query, candidate)
    assert sim >= DEFAULT_THRESHOLD, f"cosine {sim:.3f}"
    assert QuestionMatcher().judge(query, candidate, sim) == MatchVerdict(
        hit=True, similarity=sim, reason=None
    )


def test_under_the_threshold_is_a_plain_miss_without_a_reason() -> None:
    verdict = QuestionMatcher(threshold=0.9).judge("Why do cats purr?", "Why do cats purr?", 0.89)
    assert verdict == MatchVerdict(hit=False, similarity=0.89, reason=None)


def test_the_reason_names_what_differs() -> None:
    m = QuestionMatcher(threshold=0.5)
    assert m.judge("Is 3 a prime?", "Is 4 a prime?", 0.95).reason == "number differs: 3 vs 4"
    assert m.judge("Is three a prime?", "Is 3 a prime?", 0.95).hit  # number words are numbers
    assert "Java" not in (m.judge("learn Python", "learn Java", 0.95).reason or "Java")
    reason = m.judge("How do I learn Python?", "How do I learn Java?", 0.95).reason
    assert reason == "name differs: python vs java"


def test_negation_counts_contractions_and_cancels_when_both_are_negated() -> None:
    m = QuestionMatcher(threshold=0.5)
    assert m.judge("Why doesn't my phone charge?", "Why does my phone charge?", 0.95).rule == "negation"
    assert m.judge("Why can't I sleep?", "Why cannot I sleep?", 0.95).hit
    assert m.judge("Why won't my car start?", "Why does my car not start?", 0.95).hit


def test_check_off_trusts_the_threshold() -> None:
    m = QuestionMatcher(threshold=0.9, check=False)
    assert m.judge("Is 3 a prime?", "Is 4 a prime?", 0.95) == MatchVerdict(True, 0.95, None)


def test_threshold_outside_cosine_range_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        QuestionMatcher(threshold=1.5)


def test_a_judge_costs_well_under_a_millisecond() -> None:
    m = QuestionMatcher(threshold=0.0)
    questions = [f"What is the best way to learn language number {i} in {i % 7} weeks?" for i in range(2000)]
    t0 = time.perf_counter()
    for i, q in enumerate(questions):  # cold: every text is new to the token cache
        m.judge(q, questions[i - 1], 0.95)
    per_judge = (time.perf_counter() - t0) / len(questions)
    assert per_judge < 2e-4, f"{per_judge * 1e6:.0f} us per judge"
