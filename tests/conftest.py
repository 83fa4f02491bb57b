"""Shared fixtures: the real models are loaded once per test session; every test gets its own data dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ragline import Engine
from ragline.answer.llm import LlamaCppLLM, build_llm
from ragline.config import EmbedderSettings, LLMSettings, Settings, load_settings
from ragline.embed.factory import build_embedder
from ragline.embed.onnx import OnnxEmbedder

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(__import__("os").environ.get("RAGLINE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def embedder() -> OnnxEmbedder:
    return build_embedder(EmbedderSettings())


@pytest.fixture(scope="session")
def llm() -> LlamaCppLLM:
    return build_llm(LLMSettings(n_parallel=2))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data")


@pytest.fixture
def make_engine(tmp_path: Path, embedder: OnnxEmbedder) -> Iterator[Callable[..., Engine]]:
    """Build an Engine on a temp data dir with the session's embedder; extra kwargs are setting overrides."""
    engines: list[Engine] = []

    def factory(**overrides: Any) -> Engine:
        overrides.setdefault("data_dir", tmp_path / "data")
        eng = Engine(load_settings(**overrides), embedder=embedder)
        engines.append(eng)
        return eng

    yield factory
    for e in engines:
        e.close()


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()
