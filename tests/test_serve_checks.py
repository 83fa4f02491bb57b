"""`ragline serve` checks what it needs before it starts, and says why it never got ready."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ragline.config import load_settings
from ragline.engine import Engine
from ragline.errors import MissingDependency
from ragline.server.app import create_app
from ragline.server.run import check_dependencies


@pytest.mark.parametrize(
    ("settings", "module", "extra"),
    [
        ({"store": {"url": "postgresql://db/rl"}}, "psycopg", "postgres"),
        ({"store": {"url": "postgres://db/rl"}}, "psycopg_pool", "postgres"),
        ({"state": {"url": "redis://cache:6379/0"}}, "redis", "redis"),
        ({"rerank": {"kind": "remote", "url": "http://rr/rerank"}}, "httpx", "rerank"),
        ({"index": {"kind": "qdrant", "url": "http://qdrant:6333"}}, "qdrant_client", "qdrant"),
        ({"index": {"kind": "qdrant"}}, "qdrant_client", "qdrant"),
    ],
)
def test_serve_names_the_extra_of_a_configured_backend(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    settings: dict[str, dict[str, str]],
    module: str,
    extra: str,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    with pytest.raises(MissingDependency) as e:
        check_dependencies(load_settings(data_dir=tmp_path, **settings))
    assert f"pip install 'ragline[{extra}]'" in str(e.value)
    assert "\n" not in str(e.value)


def test_serve_checks_pass_with_everything_installed(tmp_path: Path) -> None:
    check_dependencies(
        load_settings(
            data_dir=tmp_path,
            store={"url": "postgresql://db/rl"},
            state={"url": "redis://cache:6379/0"},
            index={"kind": "qdrant", "url": "http://qdrant:6333"},
        )
    )


def test_serve_refuses_more_than_one_worker() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "ragline.cli", "serve", "--workers", "2"],
        env={k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stdout + res.stderr  # a usage error: nothing was started
    flat = " ".join(res.stderr.replace("│", " ").split())  # typer's box folds the message
    assert "Invalid value for --workers" in flat and "run one worker per data_dir" in flat
    assert "Traceback" not in res.stderr


async def test_ready_reports_why_the_models_failed_to_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(data_dir=tmp_path, embedder={"kind": "onnx_dir", "path": str(tmp_path / "none")})
    app = create_app(Engine(settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            deadline = time.monotonic() + 30
            while True:
                resp = await client.get("/health/ready")
                assert resp.status_code == 503
                if resp.json()["status"] != "loading" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
    # health is open to anyone: it names no file; the log says which
    assert resp.json() == {"status": "failed", "reason": "the models failed to load; the server log says why"}
    failures = [r for r in caplog.records if "failed to load" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None  # one line, no traceback
    assert f"embedding model directory not found: {tmp_path / 'none'}" in failures[0].getMessage()
