"""Answer evaluation on QA datasets with reference answers (``ragline eval answers``).

The dataset is a BEIR-layout folder (see :mod:`ragline.eval.beir`) plus ``answers.jsonl``: one
``{"_id", "answers": [str, ...], "context_id"}`` object per line (question id, reference answers,
and optionally the corpus id of the passage the answer comes from; other keys are ignored).
The corpus goes into the retrieval evaluator's cached scratch collection (same key, so
``ragline eval retrieval`` and ``ragline eval answers`` share one index). Each question is then
answered with ``Engine.answer``, one at a time, tokens streamed.

Metrics (means over the evaluated questions unless said otherwise):

- ``exact_match`` / ``f1``: the official SQuAD v1.1 scoring. Both strings are normalised
  (lower case, punctuation removed, the articles a/an/the removed, whitespace collapsed); EM is
  1 when the normalised strings are equal; F1 is the F1 of the two token multisets. Each is the
  maximum over the references. The scored text is the answer with its ``[n]`` markers removed;
  a "Not found" answer scores 0.
- ``contains``: 1 when a normalised reference occurs in the normalised answer (as whole tokens).
  Generated answers are sentences while SQuAD references are short spans, which EM and F1
  punish; ``contains`` says whether the answer holds the reference at all.
- ``not_found``: the share of questions answered "Not found in the provided documents."
- ``citation_precision``: micro-averaged over every (answer sentence, cited number) pair of the
  found answers. The answer is cut into claims after sentence punctuation and after each marker
  run; a claim's citations are its ``[n]`` markers (a marker that opens a piece belongs to the
  claim before - extractive answers write ``sentence. [n]`` - unless the answer itself opens with
  one: ``[1] sentence. [2] sentence.``). Numbers that point at no source are dropped first, as the
  answerer drops them (quoted scientific text carries its own ``[52]``). The pair is
  *supported* when at least ``support_threshold`` (default 0.5) of the sentence's content words
  occur in the cited chunk (its title and text): content words are the SQuAD-normalised tokens
  that are not English stop words, compared after stripping a plural ``s``. Token containment,
  not embedding similarity: it is deterministic, independent of the embedder under test, and it
  checks that the cited chunk holds the sentence's words. Sentences with no content words are not
  judged. ``cited_sentences`` is the share of answer sentences that carry a citation.
- ``gold_in_sources``: the share of questions whose ``context_id`` passage is among the sources
  the answer was built from (a retrieval diagnostic; absent when answers.jsonl has no context_id).
- ``latency_ms``: the wall time of ``Engine.answer`` (query embedding, retrieval, generation,
  citation attribution), P50/P95/mean. ``ttft_ms``: from the call to the first streamed token,
  over the questions where the model was called (generate mode; an answer that retrieval already
  judges "Not found" streams nothing). Extractive answers stream nothing: no TTFT. Each question
  also records the answer's usage (retrieval and generation ms, prompt and completion tokens).

One untimed answer to an unrelated question comes first (the first ONNX run and the first LLM
call are slow). ``limit`` picks that many questions evenly spaced over the dataset's question
order, so a small run still covers every part of the corpus.
"""

from __future__ import annotations

import json
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ragline import __version__
from ragline.answer.citations import strip_invalid
from ragline.answer.llm import LLM
from ragline.config import Settings
from ragline.embed.base import Embedder
from ragline.errors import ConfigError
from ragline.eval.beir import BeirDataset, load_beir
from ragline.eval.retrieval import IndexInfo, RetrievalEvaluator
from ragline.ingest.pipeline import ProgressCallback
from ragline.types import Answer, AnswerMode

DEFAULT_SUPPORT_THRESHOLD = 0.5

#: Called after each question: (questions done, questions total).
QuestionProgress = Callable[[int, int], None]

# -- SQuAD v1.1 scoring -------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_MARKER = re.compile(r"\[\d+(?:\s*[,;]\s*\d+)*\]")
_LEADING_MARKERS = re.compile(r"^((?:\[\d+(?:\s*[,;]\s*\d+)*\]\s*)+)")
_CLAIM_SPLIT = re.compile(r"(?<=[.!?])\s+|(?<=\])\s+")


def normalize_answer(s: str) -> str:
    """SQuAD v1.1's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    p = normalize_answer(prediction)
    return max((1.0 if p == normalize_answer(r) else 0.0 for r in references), default=0.0)


def _f1(prediction: str, reference: str) -> float:
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = Counter(p) & Counter(r)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, references: Sequence[str]) -> float:
    return max((_f1(prediction, r) for r in references), default=0.0)


def contains_answer(prediction: str, references: Sequence[str]) -> float:
    p = f" {normalize_answer(prediction)} "
    return max(
        (1.0 if (n := normalize_answer(r)) and f" {n} " in p else 0.0 for r in references), default=0.0
    )


def strip_markers(text: str) -> str:
    """The answer without its ``[n]`` citation markers."""
    return " ".join(_MARKER.sub(" ", text).split())


# -- citation support ---------------------------------------------------------------------

_STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    according source sources answer provided document documents
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def _stem(token: str) -> str:
    return token[:-1] if len(token) > 3 and token.endswith("s") and not token.endswith("ss") else token


def content_words(text: str) -> set[str]:
    """SQuAD-normalised tokens that are not stop words, plural ``s`` stripped."""
    return {_stem(t) for t in normalize_answer(strip_markers(text)).split() if t not in _STOPWORDS}


def support(sentence: str, chunk_text: str) -> float | None:
    """Share of the sentence's content words found in the chunk; None when it has none."""
    words = content_words(sentence)
    if not words:
        return None
    chunk = {_stem(t) for t in normalize_answer(chunk_text).split()}
    return len(words & chunk) / len(words)


def cited_sentences(text: str) -> list[tuple[str, list[int]]]:
    """Answer claims with the citation numbers each carries.

    The text is cut after sentence punctuation and after every marker run (a marker ends a
    claim even where no full stop follows, as in extractive answers built from fragments).
    Markers normally close their claim, so a marker run that opens a piece goes to the claim
    before it (``A. [1] B. [2]`` cites 1 for A and 2 for B). An answer that itself opens with a
    marker puts its markers first (``[1] A. [2] B.``): then a marker run goes to the claim after it.
    """
    out: list[tuple[str, list[int]]] = []
    markers_first = _LEADING_MARKERS.match(text.strip()) is not None
    pending: list[int] = []
    for raw in _CLAIM_SPLIT.split(text.strip()):
        s = raw.strip()
        m = _LEADING_MARKERS.match(s)
        lead = _numbers(m.group(1)) if m else []
        if m and out and not markers_first:
            prev, nums = out[-1]
            out[-1] = (prev, nums + [n for n in lead if n not in nums])
            lead = []
        if m:
            s = s[m.end() :].strip()
        if not s:
            pending += [n for n in lead if n not in pending]
            continue
        nums = pending + [n for n in lead if n not in pending]
        out.append((s, nums + [n for n in _numbers(s) if n not in nums]))
        pending = []
    return out


def _numbers(text: str) -> list[int]:
    nums: list[int] = []
    for m in _MARKER.finditer(text):
        for n in re.split(r"\s*[,;]\s*", m.group(0)[1:-1]):
            if int(n) not in nums:
                nums.append(int(n))
    return nums


@dataclass(slots=True)
class CitationCheck:
    sentence: str
    number: int
    #: Share of the sentence's content words in the cited chunk.
    support: float | None
    supported: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "sentence": self.sentence,
            "number": self.number,
            "support": None if self.support is None else round(self.support, 3),
            "supported": self.supported,
        }


@dataclass(slots=True)
class CitationStats:
    sentences: int = 0
    cited_sentences: int = 0
    checks: list[CitationCheck] = field(default_factory=list)

    @property
    def judged(self) -> int:
        return len(self.checks)

    @property
    def supported(self) -> int:
        return sum(1 for c in self.checks if c.supported)


def check_citations(
    answer_text: str, sources: Sequence[str], threshold: float = DEFAULT_SUPPORT_THRESHOLD
) -> CitationStats:
    """Judge every (sentence, [n]) pair of an answer against ``sources`` (source n = sources[n-1]).

    Bracketed numbers that point at no source are not citations of the answer and are dropped
    first, as the answerer drops them from generated text (scientific text quoted by extractive
    answers carries its own reference numbers, e.g. ``[52]``).
    """
    stats = CitationStats()
    for sentence, nums in cited_sentences(strip_invalid(answer_text, len(sources))):
        if not content_words(sentence):
            continue
        stats.sentences += 1
        if nums:
            stats.cited_sentences += 1
        for n in nums:
            sup = support(sentence, sources[n - 1])
            assert sup is not None
            stats.checks.append(CitationCheck(strip_markers(sentence), n, sup, sup >= threshold))
    return stats


# -- the dataset ---------------------------------------------------------------------------


@dataclass(slots=True)
class Reference:
    answers: list[str]
    context_id: str | None = None


def load_answers(path: Path) -> dict[str, Reference]:
    """Read answers.jsonl: question id -> reference answers (and the gold passage id)."""
    out: dict[str, Reference] = {}
    try:
        fh = path.open("rb")
    except OSError as e:
        raise ConfigError(f"cannot read answers file {path}: {e.strerror or e}") from e
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path}:{lineno}: invalid JSON ({e})") from e
            answers = obj.get("answers") if isinstance(obj, dict) else None
            if (
                not isinstance(obj, dict)
                or "_id" not in obj
                or not isinstance(answers, list)
                or not answers
                or not all(isinstance(a, str) for a in answers)
            ):
                raise ConfigError(f"{path}:{lineno}: expected an object with '_id' and 'answers' (strings)")
            ctx = obj.get("context_id")
            out[str(obj["_id"])] = Reference(list(answers), None if ctx is None else str(ctx))
    if not out:
        raise ConfigError(f"answers file {path} holds no answers")
    return out


@dataclass(slots=True)
class QADataset:
    beir: BeirDataset
    #: question id -> references, for the questions of the split that have answers (qrels order).
    references: dict[str, Reference]

    @property
    def name(self) -> str:
        return self.beir.name

    def questions(self, limit: int | None = None) -> list[str]:
        """Question ids; with ``limit``, that many evenly spaced over the question order."""
        ids = list(self.references)
        if limit is None or limit >= len(ids):
            return ids
        return [ids[(i * len(ids)) // limit] for i in range(limit)]


def load_qa(root: str | Path, split: str = "test") -> QADataset:
    root = Path(root)
    beir = load_beir(root, split)
    path = root / "answers.jsonl"
    if not path.is_file():
        raise ConfigError(f"{root} has no answers.jsonl (reference answers are needed to score answers)")
    refs = load_answers(path)
    ordered = {qid: refs[qid] for qid in beir.queries if qid in refs}
    if not ordered:
        raise ConfigError(f"no question of qrels/{split}.tsv has a reference answer in {path}")
    return QADataset(beir, ordered)


# -- results -------------------------------------------------------------------------------


@dataclass(slots=True)
class QuestionResult:
    id: str
    question: str
    references: list[str]
    answer: str
    found: bool
    exact_match: float
    f1: float
    contains: float
    latency_ms: float
    ttft_ms: float | None
    gold_in_sources: bool | None
    citations: CitationStats
    retrieval_ms: float = 0.0
    generation_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "references": self.references,
            "answer": self.answer,
            "found": self.found,
            "exact_match": self.exact_match,
            "f1": round(self.f1, 4),
            "contains": self.contains,
            "latency_ms": round(self.latency_ms, 1),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 1),
            "gold_in_sources": self.gold_in_sources,
            "retrieval_ms": round(self.retrieval_ms, 1),
            "generation_ms": round(self.generation_ms, 1),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "citations": [c.to_dict() for c in self.citations.checks],
        }


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p95": None, "mean": None, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p95": round(float(np.percentile(a, 95)), 1),
        "mean": round(float(a.mean()), 1),
        "n": len(values),
    }


@dataclass(slots=True)
class AnswerEvalResult:
    dataset: str
    dataset_path: str
    split: str
    mode: AnswerMode
    index: IndexInfo
    questions: list[QuestionResult]
    settings: dict[str, Any]
    support_threshold: float = DEFAULT_SUPPORT_THRESHOLD
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def _mean(self, values: Sequence[float]) -> float:
        return float(np.mean(values)) if values else 0.0

    @property
    def exact_match(self) -> float:
        return self._mean([q.exact_match for q in self.questions])

    @property
    def f1(self) -> float:
        return self._mean([q.f1 for q in self.questions])

    @property
    def contains(self) -> float:
        return self._mean([q.contains for q in self.questions])

    @property
    def not_found(self) -> float:
        return self._mean([0.0 if q.found else 1.0 for q in self.questions])

    @property
    def citations_judged(self) -> int:
        return sum(q.citations.judged for q in self.questions)

    @property
    def citation_precision(self) -> float | None:
        judged = self.citations_judged
        return sum(q.citations.supported for q in self.questions) / judged if judged else None

    @property
    def cited_sentences(self) -> float | None:
        n = sum(q.citations.sentences for q in self.questions)
        return sum(q.citations.cited_sentences for q in self.questions) / n if n else None

    @property
    def gold_in_sources(self) -> float | None:
        vals = [q.gold_in_sources for q in self.questions if q.gold_in_sources is not None]
        return self._mean([1.0 if v else 0.0 for v in vals]) if vals else None

    @property
    def latency(self) -> dict[str, float | int | None]:
        return _stats([q.latency_ms for q in self.questions])

    @property
    def ttft(self) -> dict[str, float | int | None]:
        return _stats([q.ttft_ms for q in self.questions if q.ttft_ms is not None])

    def metrics(self) -> dict[str, Any]:
        cp, cs, gold = self.citation_precision, self.cited_sentences, self.gold_in_sources
        return {
            "exact_match": round(self.exact_match, 4),
            "f1": round(self.f1, 4),
            "contains": round(self.contains, 4),
            "not_found": round(self.not_found, 4),
            "citation_precision": None if cp is None else round(cp, 4),
            "citations_judged": self.citations_judged,
            "cited_sentences": None if cs is None else round(cs, 4),
            "gold_in_sources": None if gold is None else round(gold, 4),
            "latency_ms": self.latency,
            "ttft_ms": self.ttft,
            "retrieval_ms": _stats([q.retrieval_ms for q in self.questions]),
            "prompt_tokens_mean": round(self._mean([q.prompt_tokens for q in self.questions]), 1),
            "completion_tokens_mean": round(self._mean([q.completion_tokens for q in self.questions]), 1),
        }

    def to_dict(self, per_question: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "dataset_path": self.dataset_path,
            "split": self.split,
            "mode": self.mode,
            "questions": len(self.questions),
            "created_at": self.created_at,
            "ragline_version": __version__,
            "index": self.index.to_dict(),
            "settings": self.settings,
            "citation_support": {
                "method": "token containment: share of the sentence's content words in the cited chunk",
                "threshold": self.support_threshold,
            },
            "metrics": self.metrics(),
        }
        if per_question:
            out["per_question"] = [q.to_dict() for q in self.questions]
        return out


# -- the service ---------------------------------------------------------------------------


class AnswerEvaluator:
    """``prepare_index`` (the retrieval evaluator's cached scratch collection), then ``evaluate``."""

    def __init__(
        self,
        dataset: QADataset,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        llm: LLM | None = None,
        support_threshold: float = DEFAULT_SUPPORT_THRESHOLD,
    ) -> None:
        self.dataset = dataset
        self.support_threshold = support_threshold
        self._retrieval = RetrievalEvaluator(dataset.beir, settings, embedder=embedder, llm=llm)
        self.engine = self._retrieval.engine
        self.settings = self._retrieval.settings

    def __enter__(self) -> AnswerEvaluator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._retrieval.close()

    def prepare_index(self, progress: ProgressCallback | None = None) -> IndexInfo:
        return self._retrieval.prepare_index(progress)

    def answer_one(self, qid: str, mode: AnswerMode) -> QuestionResult:
        question = self.dataset.beir.queries[qid]
        ref = self.dataset.references[qid]
        first: list[float] = []

        def on_token(_: str) -> None:
            if not first:
                first.append(time.perf_counter())

        t0 = time.perf_counter()
        answer = self.engine.answer(
            question, collection=self._retrieval.collection_name, mode=mode, on_token=on_token
        )
        latency = (time.perf_counter() - t0) * 1000.0
        return self._score(qid, question, ref, answer, latency, (first[0] - t0) * 1000.0 if first else None)

    def _score(
        self, qid: str, question: str, ref: Reference, answer: Answer, latency: float, ttft: float | None
    ) -> QuestionResult:
        text = strip_markers(answer.text) if answer.found else ""
        stats = (
            check_citations(
                answer.text, [f"{h.title}\n{h.text}" for h in answer.sources], self.support_threshold
            )
            if answer.found
            else CitationStats()
        )
        gold = None if ref.context_id is None else any(h.doc_id == ref.context_id for h in answer.sources)
        return QuestionResult(
            id=qid,
            question=question,
            references=ref.answers,
            answer=answer.text,
            found=answer.found,
            exact_match=exact_match(text, ref.answers) if text else 0.0,
            f1=f1_score(text, ref.answers) if text else 0.0,
            contains=contains_answer(text, ref.answers) if text else 0.0,
            latency_ms=latency,
            ttft_ms=ttft,
            gold_in_sources=gold,
            citations=stats,
            retrieval_ms=answer.usage.retrieval_ms,
            generation_ms=answer.usage.generation_ms,
            prompt_tokens=answer.usage.prompt_tokens,
            completion_tokens=answer.usage.completion_tokens,
        )

    def evaluate(
        self,
        mode: AnswerMode = "generate",
        *,
        limit: int | None = None,
        on_question: QuestionProgress | None = None,
    ) -> AnswerEvalResult:
        if mode not in ("generate", "extractive", "agentic"):
            raise ValueError(f"unknown answer mode {mode!r}; choose generate, extractive or agentic")
        name = self._retrieval.collection_name
        # untimed: the first ONNX run and the first LLM call are slow
        self.engine.answer("What is this collection about?", collection=name, mode=mode)
        ids = self.dataset.questions(limit)
        results = []
        for i, qid in enumerate(ids, start=1):
            results.append(self.answer_one(qid, mode))
            if on_question:
                on_question(i, len(ids))
        s = self.settings
        used: dict[str, Any] = {
            "embedder": self.engine.embedder.name,
            "answer": s.answer.model_dump(),
            "retrieval": s.retrieval.model_dump(),
            "chunking": s.chunking.model_dump(),
        }
        if mode == "generate":
            used["llm"] = {
                "name": self.engine.llm.name,
                **s.llm.model_dump(
                    mode="json",
                    include={"max_tokens", "temperature", "seed", "n_ctx", "n_parallel", "threads"},
                ),
            }
        return AnswerEvalResult(
            dataset=self.dataset.name,
            dataset_path=str(self.dataset.beir.root),
            split=self.dataset.beir.split,
            mode=mode,
            index=self._retrieval.index_info,
            questions=results,
            settings=used,
            support_threshold=self.support_threshold,
        )


def evaluate_answers(
    dataset_dir: str | Path,
    settings: Settings,
    *,
    mode: AnswerMode = "generate",
    split: str = "test",
    limit: int | None = None,
    embedder: Embedder | None = None,
    llm: LLM | None = None,
    on_ingest: ProgressCallback | None = None,
    on_question: QuestionProgress | None = None,
) -> AnswerEvalResult:
    """Load the QA dataset, build or reuse its index, answer and score the questions."""
    dataset = load_qa(dataset_dir, split)
    with AnswerEvaluator(dataset, settings, embedder=embedder, llm=llm) as ev:
        ev.prepare_index(on_ingest)
        return ev.evaluate(mode, limit=limit, on_question=on_question)
