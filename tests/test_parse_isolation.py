"""Parsing in worker processes (ingest/isolation.py).

A worker returns the same documents as an inline parse for every format; a file over the memory
cap or the timeout fails alone with a clean reason and the next file still parses; a worker that
dies is replaced; cancelling an ingestion kills its parse at once; and a real server keeps
answering `/health/live` within 100 ms while it parses a PDF whose page tree lists one page
20,000 times (inline, pypdf's objects and their garbage collection stalled the event loop for
100-240 ms).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ragline_process
from fixtures import paragraphs, write_docx, write_jsonl, write_junk, write_pdf, write_text
from ragline import Engine
from ragline.errors import IngestCancelled, ParseError
from ragline.ingest.isolation import ParsePool, shared_pool
from ragline.ingest.parsers import ParseLimits, iter_jsonl, parse_file
from test_hardening_ingest import LEAKS, _job, _upload, pdf_repeated_page
from test_hardening_probe import _while_polling_health

LIMITS = ParseLimits()


@pytest.fixture(scope="module")
def pool() -> Iterator[ParsePool]:
    p = ParsePool(workers=1)
    yield p
    p.close()


def _slow_jsonl(path: Path, lines: int = 100_000) -> Path:
    """A JSONL file that takes seconds to parse (about 30 µs a line)."""
    with path.open("w") as fh:
        for i in range(lines):
            fh.write(json.dumps({"_id": str(i), "text": f"river mountain engine {i}"}) + "\n")
    return path


def _vm_bytes(pid: int) -> int:
    m = re.search(r"^VmSize:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert m
    return int(m.group(1)) * 1024


def _clean(reason: str) -> str:
    assert not any(leak in reason for leak in LEAKS), reason
    return reason


def test_a_worker_parses_every_format_as_inline(pool: ParsePool, tmp_path: Path) -> None:
    text = paragraphs(3, seed=1)
    files = {
        "txt": write_text(tmp_path / "a.txt", text),
        "md": write_text(tmp_path / "b.md", f"# Title\n\n{text}\n\n## Part two\n\nMore [text](x).\n"),
        "html": write_text(
            tmp_path / "c.html",
            f"<html><head><title>T</title></head><body><h1>Head</h1><p>{text}</p>"
            "<h2>Sub</h2><div>direct <b>bold</b> text</div><ul><li>one</li></ul></body></html>",
        ),
        "pdf": write_pdf(tmp_path / "d.pdf", [["Page one line."], ["Page two, other words."]], title="P"),
        "docx": write_docx(
            tmp_path / "e.docx",
            [("title", "Doc"), ("h1", "Intro"), ("p", text), ("table", [["a", "b"], ["c", "d"]])],
        ),
        "jsonl": write_jsonl(
            tmp_path / "f.jsonl",
            [{"_id": "1", "title": "One", "text": "first", "lang": "en"}, {"id": "2", "text": "second"}],
        ),
    }
    for kind, path in files.items():
        inline = parse_file(path, f"id-{kind}", LIMITS)
        assert pool.parse(path, f"id-{kind}", LIMITS) == inline, kind
        assert inline and inline[0].sections, kind
    # JSONL as the pipeline reads it: a bad line is a reason in the list, the others kept
    lines = write_jsonl(tmp_path / "g.jsonl", [{"_id": "1", "text": "ok"}, "{not json", {"text": "no id"}])
    inline_lines = [str(x) if isinstance(x, ParseError) else x for x in iter_jsonl(lines)]
    worker_lines = [str(x) if isinstance(x, ParseError) else x for x in pool.parse_lines(lines)]
    assert worker_lines == inline_lines and len(worker_lines) == 3
    # failures are the same reasons, and an unreadable file the same OSError
    for bad in (write_junk(tmp_path / "junk.pdf"), write_text(tmp_path / "empty.txt", " \n")):
        with pytest.raises(ParseError) as inline_error:
            parse_file(bad, "x", LIMITS)
        with pytest.raises(ParseError) as worker_error:
            pool.parse(bad, "x", LIMITS)
        assert str(worker_error.value) == str(inline_error.value)
    with pytest.raises(FileNotFoundError):
        pool.parse(tmp_path / "missing.txt", "x", LIMITS)


def test_over_the_memory_cap_one_file_fails_cleanly_and_the_next_parses(
    pool: ParsePool, make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    ok = write_text(tmp_path / "ok.md", "# Fine\n\n" + paragraphs(2, seed=3))
    pool.parse(ok, "ok", LIMITS)
    # a worker's address space at rest (the parsers, imported by the forkserver) plus 256 MiB
    cap = _vm_bytes(pool.pids()[0]) + (256 << 20)
    hog = tmp_path / "hog.jsonl"  # one line of 8 million empty objects: about 600 MB once parsed
    hog.write_bytes(b'{"_id": "hog", "text": "t", "x": [' + b"{}," * 8_000_000 + b"{}]}\n")
    engine = make_engine(ingest={"parse_isolation": "process", "parse_memory_bytes": cap})
    report = engine.ingest([hog, ok], collection="kb")
    assert [f.path for f in report.failed] == [str(hog)]
    assert "ingest.parse_memory_bytes" in _clean(report.failed[0].reason)
    assert report.added == 1 and report.chunks >= 1
    # the same cap, a file that fits: parsed as usual
    assert shared_pool(engine.settings.ingest).parse(ok, "ok", LIMITS) == parse_file(ok, "ok", LIMITS)


def test_over_the_timeout_one_file_fails_cleanly_and_the_next_parses(
    make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    slow = _slow_jsonl(tmp_path / "slow.jsonl")  # about 3 s to parse
    ok = write_text(tmp_path / "ok.md", "# Fine\n\n" + paragraphs(2, seed=4))
    engine = make_engine(ingest={"parse_isolation": "process", "parse_timeout_s": 0.5})
    shared_pool(engine.settings.ingest).parse(ok, "ok", LIMITS)  # the worker is up: only the parse is timed
    t0 = time.perf_counter()
    report = engine.ingest([slow, ok], collection="kb")
    elapsed = time.perf_counter() - t0
    assert [(f.path, f.reason) for f in report.failed] == [
        (str(slow), "could not be parsed within the limits (ingest.parse_timeout_s: 0.5 s)")
    ]
    assert report.added == 1
    assert elapsed < 2.5, elapsed


def test_a_worker_that_dies_is_a_clean_failure_and_is_replaced(pool: ParsePool, tmp_path: Path) -> None:
    slow = _slow_jsonl(tmp_path / "slow.jsonl")
    ok = write_text(tmp_path / "ok.txt", paragraphs(1, seed=5))
    pool.parse(ok, "ok", LIMITS)
    (victim,) = pool.pids()
    errors: list[str] = []

    def run() -> None:
        try:
            pool.parse(slow, "slow", LIMITS)
        except ParseError as e:
            errors.append(str(e))

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    os.kill(victim, signal.SIGKILL)  # an out-of-memory kill, a segfault in a C parser, ...
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and "parser process ended unexpectedly" in _clean(errors[0])
    assert pool.parse(ok, "ok", LIMITS) == parse_file(ok, "ok", LIMITS)
    assert victim not in pool.pids()


def test_cancelling_an_ingestion_mid_parse_kills_the_parse(
    make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    slow = _slow_jsonl(tmp_path / "slow.jsonl", lines=200_000)  # about 6 s to parse
    engine = make_engine(ingest={"parse_isolation": "process"})
    pool = shared_pool(engine.settings.ingest)
    start = time.perf_counter()
    stopped: list[float] = []
    busy: list[int] = []

    def should_stop() -> bool:
        if time.perf_counter() - start < 0.5:
            return False
        if not stopped:
            busy.extend(pool.pids())
            stopped.append(time.perf_counter())
        return True

    with pytest.raises(IngestCancelled):
        engine.ingest([slow], collection="kb", should_stop=should_stop)
    latency = time.perf_counter() - stopped[0]
    assert latency < 0.5, latency  # not the seconds the parse had left
    assert busy  # a worker was parsing when the stop came, and it is gone now
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in busy) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in busy), busy
    assert engine.documents(collection="kb") == []


@pytest.mark.slow
def test_the_server_stays_responsive_while_it_parses_a_hostile_pdf(tmp_path: Path) -> None:
    pdf = pdf_repeated_page(20_000)
    with ragline_process(tmp_path / "data") as (_, base):
        # the warm-up starts the parser pool and creates the collection: what is timed is the PDF
        warm = _upload(
            base, "warm", b"warm.md", b"# Warm\n\nGlaciers carve valleys over thousands of years.\n"
        )
        assert _job(base, warm.json())["status"] == "succeeded"
        jobs: list[dict[str, Any]] = []
        latencies = _while_polling_health(
            base, lambda: jobs.append(_job(base, _upload(base, "warm", b"repeat.pdf", pdf).json()))
        )
    assert jobs[0]["status"] == "succeeded" and jobs[0]["result"]["chunks"] == 1, jobs
    assert latencies and max(latencies) < 100, sorted(latencies)[-5:]
