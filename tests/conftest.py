"""Shared fixtures: the real models are loaded once per test session; every test gets its own data dir."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import error_audit
from ragline import Engine
from ragline.answer.llm import LlamaCppLLM, build_llm
from ragline.config import EmbedderSettings, LLMSettings, Settings, load_settings
from ragline.embed.factory import build_embedder
from ragline.embed.onnx import OnnxEmbedder
from services import postgres_url, redis_url  # noqa: F401  (session fixtures: one server each)

REPO = Path(__file__).resolve().parent.parent

error_audit.install()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    error_audit.CURRENT_TEST[0] = item.nodeid


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # the error-body audit reads what every other test received: it runs last
    last = [i for i in items if i.module is not None and i.module.__name__ == "test_zz_error_leaks"]
    items[:] = [i for i in items if i not in last] + last


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


RAGLINE = str(Path(sys.executable).parent / "ragline")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def ragline_process(
    data_dir: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run a real `ragline serve` on 127.0.0.1 until its models are loaded; yields (process, base URL).

    ``env`` adds settings (RAGLINE_...) to the environment; the server's log is data_dir/server.log.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "RAGLINE_DATA_DIR": str(data_dir), **(env or {})}
    port = free_port()
    log_path = data_dir / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [RAGLINE, "serve", "--port", str(port)], env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {log_path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not become ready in {timeout:.0f} s")
                time.sleep(0.2)
            yield proc, base
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def ragline_server(data_dir: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[str]:
    """Run a real `ragline serve` on 127.0.0.1 until its models are loaded; yields the base URL."""
    with ragline_process(data_dir, env, timeout) as (_, base):
        yield base
