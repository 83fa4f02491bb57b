"""End-to-end answers with the real LLM on the bundled corpus (README.md + docs/).

The corpus is ingested once per module into a temp data dir; the LLM is the session's
SmolLM2-135M, wrapped in a proxy that counts calls and keeps the last raw completion.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ragline import Engine, load_settings
from ragline.answer.llm import Completion, LlamaCppLLM
from ragline.answer.prompt import NOT_FOUND
from ragline.config import Settings
from ragline.embed.onnx import OnnxEmbedder
from ragline.types import Answer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CORPUS = [REPO / "README.md", REPO / "docs"]
COLLECTION = "ragline-docs"
RAGLINE = Path(sys.executable).parent / "ragline"
CITE = re.compile(r"\[\d+(?:\s*[,;]\s*\d+)*\]")
# Short answers keep the suite fast; the questions below are answered well within this.
MAX_TOKENS = 128

QUESTION = "How does ragline keep ingestion crash-safe?"
STREAM_QUESTION = "Where does ragline store its data?"
OFF_TOPIC = "What is the boiling point of tungsten?"


class CountingLLM:
    """Passes every call to the real LLM; counts the calls and keeps the last completion."""

    def __init__(self, inner: LlamaCppLLM) -> None:
        self._inner = inner
        self.calls = 0
        self.last: Completion | None = None

    @property
    def name(self) -> str:
        return self._inner.name

    def chat(self, messages: Sequence[dict[str, str]], **kwargs: Any) -> Completion:
        self.calls += 1
        self.last = self._inner.chat(messages, **kwargs)
        return self.last

    def complete(self, prompt: str, **kwargs: Any) -> Completion:
        self.calls += 1
        self.last = self._inner.complete(prompt, **kwargs)
        return self.last


@pytest.fixture(scope="module")
def corpus_settings(tmp_path_factory: pytest.TempPathFactory, embedder: OnnxEmbedder) -> Settings:
    settings = load_settings(data_dir=tmp_path_factory.mktemp("ask") / "data", llm={"max_tokens": MAX_TOKENS})
    with Engine(settings, embedder=embedder) as engine:
        report = engine.ingest(CORPUS, collection=COLLECTION)
    assert report.failed == [] and report.added >= 3 and report.chunks > 0
    return settings


@pytest.fixture(scope="module")
def counting_llm(llm: LlamaCppLLM) -> CountingLLM:
    return CountingLLM(llm)


@pytest.fixture
def engine(corpus_settings: Settings, embedder: OnnxEmbedder, counting_llm: CountingLLM) -> Iterator[Engine]:
    with Engine(corpus_settings, embedder=embedder, llm=counting_llm) as eng:
        yield eng


def _assert_valid_citations(answer: Answer, engine: Engine) -> None:
    doc_ids = {d.doc_id for d in engine.documents(collection=COLLECTION)}
    assert answer.citations, f"no citations in {answer.text!r}"
    for c in answer.citations:
        assert 1 <= c.number <= len(answer.sources)
        source = answer.sources[c.number - 1]
        assert c.chunk_id == source.chunk_id
        assert c.doc_id == source.doc_id and c.doc_id in doc_ids
        assert c.source and Path(c.source).name in {"README.md", *(p.name for p in (REPO / "docs").iterdir())}
        assert f"[{c.number}" in answer.text or re.search(rf"\b{c.number}\]", answer.text)


def test_generated_answer_cites_ingested_documents(engine: Engine, counting_llm: CountingLLM) -> None:
    calls = counting_llm.calls
    answer = engine.answer(QUESTION, collection=COLLECTION, mode="generate")
    assert counting_llm.calls == calls + 1
    assert answer.mode == "generate"
    assert answer.found, answer.text
    assert answer.text.strip() and answer.text != NOT_FOUND
    _assert_valid_citations(answer, engine)
    u = answer.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= MAX_TOKENS
    assert u.retrieval_ms > 0 and u.generation_ms > 0
    assert answer.to_dict()["citations"][0]["chunk_id"] == answer.citations[0].chunk_id


def test_extractive_answer_quotes_sources_without_the_llm(engine: Engine, counting_llm: CountingLLM) -> None:
    calls = counting_llm.calls
    answer = engine.answer(QUESTION, collection=COLLECTION, mode="extractive")
    assert counting_llm.calls == calls
    assert answer.mode == "extractive" and answer.found
    _assert_valid_citations(answer, engine)
    # every extracted sentence ends with its source number and is a sentence of that source
    parts = re.findall(r"(.+?) \[(\d+)\]", answer.text, re.S)
    assert parts
    for sentence, number in parts:
        assert sentence.strip() in answer.sources[int(number) - 1].text


@pytest.mark.parametrize("mode", ["generate", "extractive"])
def test_unrelated_question_is_not_found_without_calling_the_llm(
    engine: Engine, counting_llm: CountingLLM, mode: Any
) -> None:
    calls = counting_llm.calls
    answer = engine.answer(OFF_TOPIC, collection=COLLECTION, mode=mode)
    assert answer.text == "Not found in the provided documents."
    assert not answer.found and answer.citations == []
    assert counting_llm.calls == calls


def test_streaming_tokens_match_the_generated_text(engine: Engine, counting_llm: CountingLLM) -> None:
    tokens: list[str] = []
    answer = engine.answer(STREAM_QUESTION, collection=COLLECTION, on_token=tokens.append)
    assert counting_llm.last is not None
    streamed = "".join(tokens)
    assert len(tokens) > 1
    assert answer.found, answer.text
    assert streamed == counting_llm.last.text
    # the answer is the streamed text, tidied, with its citations checked and completed afterwards
    for sentence in re.split(r"(?<=[.!?])\s+", answer.text):
        assert _words(sentence) in _words(streamed)
    u = answer.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.retrieval_ms > 0 and u.generation_ms > 0


def _words(text: str) -> str:
    """The text without citation markers, whitespace normalised (no space left before punctuation)."""
    return re.sub(r"\s+([.,;:!?])", r"\1", " ".join(CITE.sub(" ", text).split()))


# -- the command line ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    env["RAGLINE_DATA_DIR"] = str(tmp_path_factory.mktemp("cli") / "data")
    env["RAGLINE_LLM__MAX_TOKENS"] = str(MAX_TOKENS)
    env["RAGLINE_LLM__N_PARALLEL"] = "1"
    out = _ragline(env, "ingest", *map(str, CORPUS), "--collection", "cli-docs", "--json")
    report = json.loads(out.stdout)
    assert report["added"] >= 3 and report["failed"] == []
    return env


def _ragline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(RAGLINE), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_ask_json_has_citations(cli_env: dict[str, str]) -> None:
    out = _ragline(cli_env, "ask", QUESTION, "--collection", "cli-docs", "--json")
    data = json.loads(out.stdout)
    assert data["found"] is True and data["mode"] == "generate"
    assert len(data["citations"]) >= 1
    for c in data["citations"]:
        assert c["chunk_id"] and c["doc_id"] and c["source"]
    assert data["usage"]["prompt_tokens"] > 0 and data["usage"]["completion_tokens"] > 0


def test_cli_ask_no_stream_prints_sources(cli_env: dict[str, str]) -> None:
    out = _ragline(cli_env, "ask", QUESTION, "--collection", "cli-docs", "--no-stream")
    assert "Sources" in out.stdout
    assert re.search(r"^\s*\[1\] ", out.stdout, re.M) or re.search(r"^\s*\[\d\] ", out.stdout, re.M)
    assert "tokens" in out.stdout
