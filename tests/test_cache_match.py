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
    ("How do I convert 6.71 SGPA into percentage?", "How do I convert 6.86 SGPA into percentage?", "number"),
    ("How do I jailbreak iOS 9.1?", "How do I jailbreak iOS 9.3.1?", "number"),
    ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
    ("Why is Saturn's moon Titan not habitable?", "Why is Saturn's moon Titan habitable?", "negation"),
    (
        "What types of planetary configurations and landmasses would maximize the fraction of "
        "civilizations that develop a detectable technology?",
        "What types of planetary configurations and landmasses would minimize the fraction of "
        "civilizations that develop a detectable technology?",
        "opposite",
    ),
    (
        "How does the HP OfficeJet 4620 Airprint compare to the HP LaserJet Enterprise M604dn?",
        "How does the HP OfficeJet 4620 Airprint compare to the HP LaserJet Enterprise M604n?",
        "number",  # a model name with digits counts as a number
    ),
    (
        "Do Pakistani women find Indian men attractive?",
        "Do Indian women find Pakistani men attractive?",
        "order",
    ),
    ("How do you convert ethene to ethane?", "How do you convert ethane to ethene?", "order"),
]

# Paraphrases (QQP-style duplicates) above the threshold that the check must let through.
SAME_QUESTION = [
    ("How do I get rid of acne?", "How can I get rid of acne?"),
    ("What is the best way to learn Python?", "What's the best way to learn Python?"),
    ("How do I improve my English speaking skills?", "How can I improve my English speaking skills?"),
    ("Why do cats purr?", "why do cats purr"),
    ("How can I make money as a thirteen year old?", "How can I make money as a 13 year old?"),
    ("Why doesn't my phone charge?", "Why won't my phone charge?"),
    ("What are the most haunted places in Delhi?", "What are the most haunted place in delhi?"),
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
    reason = m.judge(
        "How do you convert ethene to ethane?", "How do you convert ethane to ethene?", 0.99
    ).reason
    assert reason == "word order differs: convert ethene ethane vs convert ethane ethene"
    reason = m.judge("How do I learn Python?", "How do I learn Java?", 0.95).reason
    assert reason == "name differs: Python vs Java"


def test_a_name_in_one_question_only_vetoes() -> None:
    # MiniLM itself keeps most such pairs under the threshold (0.51 for these two); the rule is
    # for longer questions where one name weighs less in the embedding.
    m = QuestionMatcher(threshold=0.5)
    verdict = m.judge("How do I get a job at Google?", "How do I get a job at Microsoft?", 0.97)
    assert (verdict.hit, verdict.rule) == (False, "entity")
    assert verdict.reason == "name differs: Google vs Microsoft"
    assert m.judge("How do I get a job at Google?", "how do i get a job at google", 0.97).hit


def test_negation_counts_contractions_and_cancels_when_both_are_negated() -> None:
    m = QuestionMatcher(threshold=0.5)
    assert m.judge("Why doesn't my phone charge?", "Why does my phone charge?", 0.95).rule == "negation"
    assert m.judge("Why can't I sleep?", "Why cannot I sleep?", 0.95).hit
    assert m.judge("Why won't my car start?", "Why does my car not start?", 0.95).hit


def test_check_off_trusts_the_threshold() -> None:
    m = QuestionMatcher(threshold=0.9, check=False)
    assert m.judge("Is 3 a prime?", "Is 4 a prime?", 0.95) == MatchVerdict(True, 0.95, None)


def test_threshold_outside_cosine_range_and_unknown_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        QuestionMatcher(threshold=1.5)
    with pytest.raises(ValueError, match="unknown rules \\['numbers'\\]"):
        QuestionMatcher(rules=("numbers",))


def test_the_optional_content_rule_allows_more_different_words_the_closer_the_cosine() -> None:
    m = QuestionMatcher(threshold=0.9, rules=("content",))  # 1 word at 0.90, 1 more per 0.01
    query, candidate = "How do I cook brown rice?", "How do I cook white basmati rice?"  # 3 differ
    verdict = m.judge(query, candidate, 0.91)
    assert (verdict.hit, verdict.rule) == (False, "content")
    assert verdict.reason == "content words differ: brown vs basmati, white"
    assert m.judge(query, candidate, 0.92).hit
    assert QuestionMatcher(threshold=0.9).judge(query, candidate, 0.91).hit  # off by default


def test_a_judge_costs_well_under_a_millisecond() -> None:
    m = QuestionMatcher(threshold=0.0)
    questions = [f"What is the best way to learn language number {i} in {i % 7} weeks?" for i in range(2000)]
    t0 = time.perf_counter()
    for i, q in enumerate(questions):  # cold: every text is new to the token cache
        m.judge(q, questions[i - 1], 0.95)
    per_judge = (time.perf_counter() - t0) / len(questions)
    # About 0.1 ms on an idle core (bench/cache_precision.py reports it); the bar is 1 ms.
    assert per_judge < 1e-3, f"{per_judge * 1e6:.0f} us per judge"
    t0 = time.perf_counter()
    for i, q in enumerate(questions):  # warm: the stored question's token sets are cached
        m.judge(q, questions[i - 1], 0.95)
    assert (time.perf_counter() - t0) / len(questions) < per_judge
