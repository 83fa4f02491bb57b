"""Issue 19, part B: ingestion, collections, uploads and jobs are bounded, and their errors clean.

Hostile files are built here, small on disk (a DOCX whose document.xml inflates to 200 MB, a PDF
whose page tree lists one page 20,000 times, ...). HTTP cases run against one real `ragline
serve` started under a low file descriptor limit (RLIMIT_NOFILE) with small job and collection
caps, so the collection churn test also checks that nothing leaks descriptors or threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fixtures import paragraphs, pdf_bytes, write_docx, write_text
from ragline import Engine
from ragline.collection import Collection, validate_name
from ragline.config import Settings, load_settings
from ragline.errors import ConfigError, ParseError
from ragline.ingest.ids import normalize_id, upload_name
from ragline.ingest.parsers import ParseLimits, parse_file
from ragline.server.jobs import JobRefused, JobStore

REPO = Path(__file__).resolve().parent.parent
RAGLINE = str(Path(sys.executable).parent / "ragline")
W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
LEAKS = ("Error", "Exception", "Traceback", "pypdf", "lxml", "expat", "/tmp", "ragline-upload", "Shard")


# -- hostile files -------------------------------------------------------------------------------


def _docx_with_body(path: Path, body: Callable[[Any], None]) -> Path:
    """A real DOCX (python-docx) whose word/document.xml is replaced by what ``body`` writes."""
    base = write_docx(path.with_suffix(".base.docx"), [("p", "placeholder")])
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename != "word/document.xml":
                dst.writestr(info, src.read(info))
        part = zipfile.ZipInfo("word/document.xml")
        part.compress_type = zipfile.ZIP_DEFLATED
        with dst.open(part, "w") as fh:  # streamed: the test never holds the inflated part
            body(fh)
    base.unlink()
    return path


def docx_bomb(path: Path, inflated: int) -> Path:
    """A DOCX whose document.xml inflates to ``inflated`` bytes (one paragraph of a repeated letter)."""

    def body(fh: Any) -> None:
        fh.write(f'<?xml version="1.0"?><w:document xmlns:w="{W}"><w:body><w:p><w:r><w:t>'.encode())
        block = b"a" * (1 << 20)
        for _ in range(inflated >> 20):
            fh.write(block)
        fh.write(b"</w:t></w:r></w:p></w:body></w:document>")

    return _docx_with_body(path, body)


def docx_many_elements(path: Path, n: int) -> Path:
    def body(fh: Any) -> None:
        fh.write(f'<?xml version="1.0"?><w:document xmlns:w="{W}"><w:body>'.encode())
        for _ in range(n // 10000):
            fh.write(b"<w:p/>" * 10000)
        fh.write(b"</w:body></w:document>")

    return _docx_with_body(path, body)


def _pdf(objects: dict[int, bytes]) -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += b"%d 0 obj\n" % num + objects[num] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for num in range(1, size):
        out += b"%010d 00000 n \n" % offsets[num]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


def _page_objects(first: int, parent: int, text: str) -> dict[int, bytes]:
    stream = f"BT /F1 11 Tf 72 760 Td ({text}) Tj ET".encode()
    return {
        first: (
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >> "
            b"/Contents %d 0 R >>" % (parent, first + 2, first + 1)
        ),
        first + 1: b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        first + 2: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }


def pdf_repeated_page(times: int) -> bytes:
    """One page object listed ``times`` times in the page tree (121 KB at 20,000)."""
    kids = b" ".join([b"3 0 R"] * times)
    return _pdf(
        {
            1: b"<< /Type /Catalog /Pages 2 0 R >>",
            2: b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % times,
            **_page_objects(3, 2, "The only page of a very long document."),
        }
    )


def pdf_page_dag(depth: int) -> bytes:
    """/Pages nodes that each list the next one twice: 2^depth pages by reference, one page object."""
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>"}
    for level in range(depth):
        num, kid = 2 + level, 3 + level
        objects[num] = b"<< /Type /Pages /Kids [%d 0 R %d 0 R] /Count %d >>" % (
            kid,
            kid,
            2 ** (depth - level),
        )
    objects.update(_page_objects(2 + depth, 1 + depth, "A page reached two to the fortieth times."))
    return _pdf(objects)


def _peak_python_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    with contextlib.suppress(ParseError):
        fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


# -- parsers: caps ---------------------------------------------------------------------------------


def test_docx_bomb_is_refused_before_anything_is_inflated(tmp_path: Path) -> None:
    path = docx_bomb(tmp_path / "bomb.docx", 200 << 20)
    assert path.stat().st_size < 1 << 20  # about 200 KB on disk
    t0 = time.perf_counter()
    with pytest.raises(ParseError, match=r"unpacks to \d+ bytes.*ingest.max_unpacked_bytes"):
        parse_file(path, "bomb")
    assert time.perf_counter() - t0 < 2
    peak = _peak_python_bytes(lambda: parse_file(path, "bomb"))
    assert peak < 5 << 20, peak  # the members' sizes are read, not the members


def test_docx_zip_member_lying_about_its_size_is_read_with_a_bound(tmp_path: Path) -> None:
    """A central directory that declares a small size for a member that inflates further: zipfile
    stops at the declared size (and the CRC check fails), so nothing past the cap is ever held."""
    path = docx_bomb(tmp_path / "liar.docx", 8 << 20)
    raw = bytearray(path.read_bytes())
    # the central directory entry of document.xml: its uncompressed size (offset 24) becomes 1 KB
    at = 0
    while (at := raw.find(b"PK\x01\x02", at)) >= 0:
        name_len = int.from_bytes(raw[at + 28 : at + 30], "little")
        if raw[at + 46 : at + 46 + name_len] == b"word/document.xml":
            raw[at + 24 : at + 28] = (1024).to_bytes(4, "little")
            break
        at += 4
    else:
        pytest.fail("no central directory entry for document.xml")
    path.write_bytes(bytes(raw))
    assert sum(i.file_size for i in zipfile.ZipFile(path).infolist()) < 1 << 20
    peak = _peak_python_bytes(lambda: parse_file(path, "liar"))
    assert peak < 5 << 20, peak
    with pytest.raises(ParseError) as exc:
        parse_file(path, "liar")
    assert str(exc.value) == "corrupt or unreadable DOCX"


def test_docx_xml_element_count_is_capped(tmp_path: Path) -> None:
    path = docx_many_elements(tmp_path / "wide.docx", 1_200_000)
    with pytest.raises(ParseError, match=r"more than 1000000 XML elements.*ingest.max_xml_elements"):
        parse_file(path, "wide")
    # under a cap that fits, the same kind of file parses (empty paragraphs: no text)
    small = docx_many_elements(tmp_path / "narrow.docx", 20_000)
    with pytest.raises(ParseError, match="no extractable text"):
        parse_file(small, "narrow", ParseLimits(max_xml_elements=100_000))


def test_docx_cell_spanning_a_billion_columns_is_read_once(tmp_path: Path) -> None:
    path = write_docx(tmp_path / "span.docx", [("p", "Intro."), ("table", [["Wide cell", "Next"]])])
    with zipfile.ZipFile(path) as zf:
        parts = {i.filename: zf.read(i) for i in zf.infolist()}
    xml = parts["word/document.xml"].decode()
    xml = xml.replace("<w:tcPr>", '<w:tcPr><w:gridSpan w:val="1000000000"/>', 1)
    parts["word/document.xml"] = xml.encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.items():
            zf.writestr(name, data)
    t0 = time.perf_counter()
    (doc,) = parse_file(path, "span")
    assert time.perf_counter() - t0 < 2
    assert doc.text.count("Wide cell") == 1 and "Wide cell | Next" in doc.text


def test_pdf_page_listed_20000_times_is_one_page(tmp_path: Path) -> None:
    path = tmp_path / "repeat.pdf"
    path.write_bytes(pdf_repeated_page(20_000))
    assert path.stat().st_size < 150_000
    t0 = time.perf_counter()
    (doc,) = parse_file(path, "repeat")
    assert time.perf_counter() - t0 < 5
    assert len(doc.sections) == 1 and doc.metadata["pages"] == 1


def test_pdf_page_tree_dag_is_walked_once(tmp_path: Path) -> None:
    path = tmp_path / "dag.pdf"
    path.write_bytes(pdf_page_dag(40))  # 2^40 pages by reference
    t0 = time.perf_counter()
    (doc,) = parse_file(path, "dag")
    assert time.perf_counter() - t0 < 5
    assert len(doc.sections) == 1


def test_pdf_page_cap_fails_or_truncates_by_setting(tmp_path: Path) -> None:
    path = tmp_path / "long.pdf"
    path.write_bytes(pdf_bytes([[f"Page number {i} talks about rivers."] for i in range(1, 7)]))
    with pytest.raises(ParseError, match=r"more than 4 pages \(limit ingest.max_pdf_pages\)"):
        parse_file(path, "long", ParseLimits(max_pdf_pages=4))
    (doc,) = parse_file(path, "long", ParseLimits(max_pdf_pages=4, truncate=True))
    assert [s.page for s in doc.sections] == [1, 2, 3, 4]
    assert doc.warnings and "only the first 4" in doc.warnings[0]
    (whole,) = parse_file(path, "long")  # the default cap (2000) is far away
    assert len(whole.sections) == 6


def test_html_element_count_is_capped_before_the_dom_is_built(tmp_path: Path) -> None:
    path = write_text(tmp_path / "wide.html", "<html><body>" + "<p>x</p>" * 5000 + "</body></html>")
    with pytest.raises(ParseError, match=r"ingest\.max_xml_elements"):
        parse_file(path, "wide", ParseLimits(max_xml_elements=1000))
    assert parse_file(path, "wide")[0].text.startswith("x")


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("junk.pdf", b"%PDF-1.4\n1 0 obj << /Length 99 >> stream\nxx\nendobj\n", "corrupt or unreadable PDF"),
        ("noroot.pdf", b"%PDF-1.4\ntrailer << /Size 1 >>\n%%EOF\n", "corrupt or unreadable PDF"),
        ("notzip.docx", b"PK\x03\x04 not really a zip", "corrupt or unreadable DOCX"),
    ],
)
def test_parse_errors_name_no_library_internals(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ParseError) as exc:
        parse_file(path, "x")
    message = str(exc.value)
    assert message.startswith(reason)
    assert not any(leak in message for leak in LEAKS), message


def test_docx_with_malformed_xml_is_a_clean_error(tmp_path: Path) -> None:
    def body(fh: Any) -> None:
        fh.write(f'<w:document xmlns:w="{W}"><w:body><w:p></w:body>'.encode())  # unclosed <w:p>

    path = _docx_with_body(tmp_path / "broken.docx", body)
    with pytest.raises(ParseError) as exc:
        parse_file(path, "broken")
    assert str(exc.value) == "corrupt or unreadable DOCX"


# -- pipeline: chunks per document, bounded embedding calls ------------------------------------------


class _CallSizes:
    """Wraps the real embedder and records how many texts each document batch held."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed_documents(self, texts: Any) -> Any:
        self.sizes.append(len(texts))
        return self._inner.embed_documents(texts)


def test_chunk_cap_fails_or_truncates_and_raising_it_reingests(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    doc = write_text(tmp_path / "long.txt", paragraphs(12, seed=3, per_paragraph=6))
    fail = make_engine(data_dir=tmp_path / "d1", ingest={"max_chunks_per_document": 5})
    report = fail.ingest([doc])
    assert report.added == 0 and len(report.failed) == 1
    assert "more than 5 chunks (limit ingest.max_chunks_per_document)" in report.failed[0].reason

    cut = make_engine(data_dir=tmp_path / "d2", ingest={"max_chunks_per_document": 5, "on_limit": "truncate"})
    report = cut.ingest([doc])
    assert report.added == 1 and report.chunks == 5
    assert report.warnings and "only the first 5 were ingested" in report.warnings[0].reason
    assert report.to_dict()["warnings"]
    assert cut.ingest([doc]).unchanged == 1  # a truncated document is not re-ingested every time
    cut.close()
    more = make_engine(data_dir=tmp_path / "d2", ingest={"max_chunks_per_document": 10_000})
    report = more.ingest([doc])
    assert report.updated == 1 and report.chunks > 5  # the cap was raised: the whole document now


def test_a_large_document_is_embedded_in_bounded_batches(
    tmp_path: Path, embedder: Any, make_engine: Callable[..., Engine]
) -> None:
    spy = _CallSizes(embedder)
    engine = Engine(load_settings(data_dir=tmp_path / "d", ingest={"upsert_batch": 16}), embedder=spy)
    try:
        report = engine.ingest([write_text(tmp_path / "big.txt", paragraphs(30, seed=5, per_paragraph=6))])
    finally:
        engine.close()
    assert report.chunks > 16  # more than one batch
    assert spy.sizes and max(spy.sizes) <= 16 and sum(spy.sizes) == report.chunks


def test_ingestion_stops_when_asked(tmp_path: Path, engine: Engine) -> None:
    from ragline.errors import IngestCancelled

    files = [write_text(tmp_path / f"d{i}.txt", paragraphs(2, seed=i)) for i in range(5)]
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 2

    with pytest.raises(IngestCancelled):
        engine.ingest(files, should_stop=stop)
    assert len(engine.documents()) < 5


# -- collections ---------------------------------------------------------------------------------


def _open_fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
    return out


def test_failed_open_releases_lock_and_registry(tmp_path: Path, settings: Settings) -> None:
    import shutil

    Collection(settings, "broken", 384, "minilm", create=True).close()
    shard = settings.data_dir / "collections" / "broken" / "shard"
    shutil.rmtree(shard)
    shard.write_text("not a directory")  # fault injection: the index cannot be opened
    before = _open_fds()
    with pytest.raises(OSError):
        Collection(settings, "broken", 384, "minilm", create=False)
    leaked = {p for p in _open_fds() - before if "broken" in p}
    assert not leaked, leaked
    with (settings.data_dir / "collections" / "broken" / "lock").open("w") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # the lock was released


def test_embedder_mismatch_releases_everything(tmp_path: Path, settings: Settings) -> None:
    Collection(settings, "other", 384, "minilm", create=True).close()
    before = _open_fds()
    with pytest.raises(ConfigError, match="was built with embedder"):
        Collection(settings, "other", 768, "bigger", create=False)
    assert not {p for p in _open_fds() - before if "other" in p}


def test_open_collections_are_bounded_lru(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(collections={"max_open": 3})
    for i in range(6):
        engine.ingest_documents(
            [_doc(f"d{i}", f"Collection {i} keeps notes about rivers.")], collection=f"c{i}"
        )
    assert engine.open_collections() == ["c3", "c4", "c5"]
    hits = engine.search("rivers", collection="c0")  # an evicted collection reopens on use
    assert hits and hits[0].doc_id == "d0"
    assert engine.open_collections() == ["c4", "c5", "c0"]
    with engine.using("c1"):  # held: never closed to make room
        for i in (2, 3, 4, 5):
            engine.documents(collection=f"c{i}")
        assert "c1" in engine.open_collections()
    assert len(engine.open_collections()) == 3


_EXHAUST = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
from ragline import Engine
from ragline.config import load_settings
from ragline.errors import CollectionUnavailable
data = Path(sys.argv[1])
engine = Engine(load_settings(data_dir=data))
with engine.using("a", create=True), engine.using("b", create=True):
    hog = []
    try:
        while True:
            hog.append(open("/dev/null"))
    except OSError:
        pass
    try:  # no descriptor left, and both open collections in use: a clean 503-kind error
        engine.collection("c", create=True)
        sys.exit("opened without descriptors")
    except CollectionUnavailable as e:
        print("unavailable:", e)
    assert not (data / "collections" / "c").exists()  # nothing left behind
    assert engine.open_collections() == ["a", "b"]
engine.collection("c", create=True)  # a and b are idle now: closing them makes room
assert engine.open_collections() == ["c"], engine.open_collections()
print("ok")
"""


def test_out_of_descriptors_is_unavailable_then_idle_collections_make_room(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _EXHAUST, str(tmp_path / "data")], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "unavailable: collection 'c' cannot be opened now" in run.stdout and run.stdout.endswith("ok\n")


def test_collection_count_is_capped(make_engine: Callable[..., Engine]) -> None:
    from ragline.errors import CollectionLimitReached

    engine = make_engine(collections={"max_count": 2})
    engine.collection("a", create=True)
    engine.collection("b", create=True)
    with pytest.raises(CollectionLimitReached, match=r"limit of 2 collections.*collections.max_count"):
        engine.collection("c", create=True)
    engine.collection("a", create=True)  # an existing one is not a new one
    assert engine.collections() == ["a", "b"]


def test_collections_per_tenant_are_capped(make_engine: Callable[..., Engine]) -> None:
    from ragline.errors import CollectionLimitReached

    engine = make_engine(collections={"max_count": 10, "max_per_tenant": 2})
    for name in ("a", "b", "acme~a", "acme~b"):
        engine.collection(name, create=True)
    for name in ("c", "acme~c"):
        with pytest.raises(CollectionLimitReached, match=r"'c'.*limit of 2 collections per tenant"):
            engine.collection(name, create=True)
    engine.collection("other~a", create=True)  # another tenant still can
    engine.collection("acme~a", create=True)  # an existing one is not a new one
    assert len(engine.collections()) == 5


def test_collection_names_must_match_whole() -> None:
    assert validate_name("kb") == "kb"
    for bad in ("kb\n", "kb\r\n", "\nkb", "k b", "../kb", "a" * 65, "", "kb\x00"):
        with pytest.raises(ConfigError):
            validate_name(bad)


def _doc(doc_id: str, text: str) -> Any:
    from ragline.types import ParsedDocument, Section

    return ParsedDocument(doc_id=doc_id, source=doc_id, title=doc_id, sections=[Section(text)])


# -- ids and names -----------------------------------------------------------------------------------


def test_doc_ids_are_normalised_and_refused_when_hostile() -> None:
    assert normalize_id("cafe\u0301") == "caf\u00e9"  # NFC
    for bad in ("a\u202eb", "a\nb", "a\x00b", "a\u200bb", "x" * 513, " ", "a\ud800b"):
        with pytest.raises(ValueError):
            normalize_id(bad)
    # look-alikes: a word mixing alphabets whose letters pass for each other
    for bad in ("p\u0430ypal.pdf", "inv\u03bfice.txt", "\uff45xe.txt" + "e", "r\U0001d41eport.md"):
        with pytest.raises(ValueError, match="look-alike"):
            normalize_id(bad)
    for fine in (
        "\u043e\u0442\u0447\u0451\u0442.pdf",
        "\u0392\u03b9\u03b2\u03bb\u03af\u03bf.txt",
        "report-\u043e\u0442\u0447\u0451\u0442.pdf",
        "caf\u00e9 menu.txt",
    ):
        assert normalize_id(fine) == fine  # one alphabet per word, whatever it is
    assert upload_name("docs/2024/report.pdf") == ("report.pdf", "docs/2024/report.pdf")
    for bad in ("x" * 252 + ".txt", "a\x00.txt", ".hidden", "dir/", "\u202etxt.exe", "p\u0430ypal.pdf"):
        with pytest.raises(ValueError):
            upload_name(bad)


# -- jobs (the store itself) ------------------------------------------------------------------------


def test_finished_job_results_are_bounded_in_bytes_all_together() -> None:
    """1,000 finished jobs of up to a MiB each would hold a GiB: past keep_bytes the oldest go."""
    store = JobStore(max_result_bytes=10_000, keep=1000, keep_bytes=30_000)
    jobs = []
    for i in range(8):
        jobs.append(store.submit("ingest", lambda p, s, i=i: {"blob": str(i) * 9_000}))
        _wait(lambda: jobs[-1].finished)
    kept = [j for j in jobs if store.get(j.id) is not None]
    assert kept == jobs[-3:]  # 3 x ~9 KB fit in 30 KB; the 5 older ones were forgotten
    assert all(j.status == "succeeded" for j in kept)


def _wait(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached")
        time.sleep(0.01)


def test_job_store_caps_queues_cancels_and_expires() -> None:
    store = JobStore(max_running_ingest=1, max_queued=1, ttl_s=0.3, max_result_bytes=1000)
    release = threading.Event()
    cleaned: list[str] = []

    def slow(progress: Any, should_stop: Callable[[], bool]) -> dict[str, Any]:
        while not release.is_set():
            if should_stop():
                from ragline.errors import IngestCancelled

                raise IngestCancelled("stopped")
            time.sleep(0.01)
        return {"ok": True}

    running = store.submit("ingest", slow, cleanup=lambda: cleaned.append("running"))
    _wait(lambda: running.status == "running")
    queued = store.submit("ingest", slow, cleanup=lambda: cleaned.append("queued"))
    with pytest.raises(JobRefused) as exc:
        store.submit("ingest", slow)
    assert exc.value.code == "job_queue_full" and exc.value.retry_after >= 1
    assert "server.max_queued_jobs" in exc.value.message

    assert store.cancel(queued.id) is queued and queued.status == "cancelled"  # at once
    assert "queued" in cleaned
    store.cancel(running.id)
    assert running.status in ("cancelling", "cancelled")
    _wait(lambda: running.status == "cancelled")
    assert cleaned.count("running") == 1

    big = store.submit("ingest", lambda p, s: {"blob": "x" * 5000})
    _wait(lambda: big.finished)
    assert big.status == "failed" and "server.max_job_bytes" in (big.error or "")

    def broken(progress: Any, should_stop: Callable[[], bool]) -> dict[str, Any]:
        raise RuntimeError("Shard is not initialized")

    leaky = store.submit("ingest", broken)
    _wait(lambda: leaky.finished)
    assert leaky.status == "failed"
    assert leaky.error == "internal error: the job could not be completed (see the server log)"
    time.sleep(0.35)
    assert store.get(big.id) is None  # finished jobs expire


def test_job_store_per_owner_cap_and_timeout() -> None:
    store = JobStore(max_running_ingest=2, max_per_owner=1, timeout_s=0.2)

    def forever(progress: Any, should_stop: Callable[[], bool]) -> dict[str, Any]:
        from ragline.errors import IngestCancelled

        while not should_stop():
            time.sleep(0.01)
        raise IngestCancelled("stopped")

    mine = store.submit("ingest", forever, owner="key-a", tenant="acme")
    with pytest.raises(JobRefused, match=r"server\.max_jobs_per_key"):
        store.submit("ingest", forever, owner="key-a", tenant="acme")
    theirs = store.submit("ingest", forever, owner="key-b", tenant="globex")
    assert store.get(mine.id, tenant="globex") is None  # not another tenant's job
    assert store.cancel(mine.id, tenant="globex") is None
    assert store.get(mine.id, tenant="acme") is mine
    _wait(lambda: mine.finished and theirs.finished)
    assert mine.status == "failed" and "server.job_timeout_s" in (mine.error or "")


async def test_async_jobs_run_at_most_n_at_once_and_cancel() -> None:
    store = JobStore(max_running_async=1, max_queued=1)
    gate = asyncio.Event()

    async def work() -> dict[str, Any]:
        await gate.wait()
        return {"done": True}

    first = store.submit_async("chat", work)
    second = store.submit_async("chat", work)
    await asyncio.sleep(0.05)
    assert first.status == "running" and second.status == "queued"
    with pytest.raises(JobRefused):
        store.submit_async("chat", work)
    store.cancel(first.id)
    await asyncio.sleep(0.05)
    assert first.status == "cancelled" and second.status == "running"
    gate.set()
    await asyncio.sleep(0.05)
    assert second.status == "succeeded" and second.result == {"done": True}


# -- the real server, under a low descriptor limit ----------------------------------------------------

NOFILE = 256
MAX_COUNT = 60
MAX_OPEN = 4


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    data = tmp_path_factory.mktemp("hardening-data")
    tmp = tmp_path_factory.mktemp("hardening-tmp")  # the server's TMPDIR: uploads are staged here
    env = {
        **os.environ,
        "RAGLINE_DATA_DIR": str(data),
        "TMPDIR": str(tmp),
        "RAGLINE_LLM__N_PARALLEL": "1",
        "RAGLINE_SERVER__MAX_RUNNING_INGEST_JOBS": "1",
        "RAGLINE_SERVER__MAX_QUEUED_JOBS": "2",
        "RAGLINE_SERVER__MAX_JOB_BYTES": "65536",
        "RAGLINE_COLLECTIONS__MAX_COUNT": str(MAX_COUNT),
        "RAGLINE_COLLECTIONS__MAX_OPEN": str(MAX_OPEN),
        "RAGLINE_INGEST__UPSERT_BATCH": "32",  # a cancelled ingestion stops within 32 chunks
    }
    from conftest import free_port

    port = free_port()
    log = (data / "server.log").open("w")
    proc = subprocess.Popen(
        [RAGLINE, "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_low_nofile,  # a plain setrlimit between fork and exec
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {(data / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    try:
        yield base, proc.pid, tmp
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _job(base: str, job: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cur: dict[str, Any] = httpx.get(f"{base}/v1/jobs/{job['id']}").json()
        if cur["status"] in ("succeeded", "failed", "cancelled"):
            return cur
        time.sleep(0.1)
    pytest.fail(f"job {job['id']} did not finish")


def _multipart(filename: bytes, data: bytes, fields: dict[str, bytes] | None = None) -> tuple[bytes, str]:
    """A multipart body written by hand, so a file name can carry any bytes (NUL included)."""
    boundary = "ragline-test-boundary"
    parts = [
        b'--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n%s\r\n" % (boundary.encode(), filename, data)
    ]
    for key, value in (fields or {}).items():
        parts.append(
            b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
            % (boundary.encode(), key.encode(), value)
        )
    body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _upload(base: str, collection: str, filename: bytes, data: bytes, **fields: bytes) -> httpx.Response:
    body, ctype = _multipart(filename, data, fields)
    return httpx.post(
        f"{base}/v1/collections/{collection}/files", content=body, headers={"content-type": ctype}, timeout=30
    )


def _assert_clean(message: str | None) -> None:
    assert message and not any(leak in message for leak in LEAKS), message


def test_http_hostile_files_fail_with_clean_reasons(srv: tuple[str, int, Path], tmp_path: Path) -> None:
    base, pid, _ = srv
    rss_before = _rss(pid)
    bomb = docx_bomb(tmp_path / "bomb.docx", 200 << 20).read_bytes()
    job = _job(base, _upload(base, "hostile", b"bomb.docx", bomb).json())
    assert job["status"] == "failed" and "ingest.max_unpacked_bytes" in job["error"]
    _assert_clean(job["error"])
    job = _job(base, _upload(base, "hostile", b"repeat.pdf", pdf_repeated_page(20_000)).json())
    assert job["status"] == "succeeded" and job["result"]["chunks"] == 1
    job = _job(base, _upload(base, "hostile", b"junk.pdf", b"%PDF-1.4\n1 0 obj << >> stream\n").json())
    assert job["status"] == "failed" and job["error"] == "corrupt or unreadable PDF"
    assert _rss(pid) - rss_before < 150 << 20  # not the +1.9 GB of a DOCX inflated whole


def test_http_names_ids_and_file_names(srv: tuple[str, int, Path]) -> None:
    base, _, tmp = srv
    assert httpx.post(base + "/v1/collections", json={"name": "kb\n"}).status_code == 400
    assert httpx.get(base + "/v1/collections/kb%0A/documents").status_code == 400
    models = {m["id"] for m in httpx.get(base + "/v1/models").json()["data"]}
    assert not any("\n" in m for m in models)

    r = _upload(base, "names", b"x" * 300 + b".txt", b"Some text.")
    assert r.status_code == 400 and "255 bytes" in r.json()["error"]["message"]
    r = _upload(base, "names", b"a\x00b.txt", b"Some text.")
    assert r.status_code == 400 and "U+0000" in r.json()["error"]["message"]
    r = _upload(base, "names", "evil\u202etxt.exe.md".encode(), b"Some text.")
    assert r.status_code == 400
    r = _upload(base, "names", b"ok.txt", b"Some text.", doc_id=b"d" * 10_000)
    assert r.status_code == 400
    r = _upload(base, "names", b"ok.txt", b"Some text.", doc_id="x\u202ey".encode())
    assert r.status_code == 400 and r.json()["error"]["param"] == "doc_id"
    bad_id = {"documents": [{"id": "line\nbreak", "text": "Text."}]}
    assert httpx.post(base + "/v1/collections/names/documents", json=bad_id).status_code == 400
    r = _upload(base, "names", "p\u0430ypal.txt".encode(), b"Some text.")  # a Cyrillic a
    assert r.status_code == 400 and "look-alike" in r.json()["error"]["message"]
    lookalike = {"documents": [{"id": "inv\u03bfice", "text": "Text."}]}  # a Greek omicron
    assert httpx.post(base + "/v1/collections/names/documents", json=lookalike).status_code == 400
    assert not list(tmp.glob("ragline-upload-*"))  # refused uploads leave no folder behind

    nfd = {"documents": [{"id": "cafe\u0301", "text": "Coffee notes about a small cafe."}]}
    assert _job(base, httpx.post(base + "/v1/collections/names/documents", json=nfd).json())["status"] == (
        "succeeded"
    )
    ids = {d["doc_id"] for d in httpx.get(base + "/v1/collections/names/documents").json()["data"]}
    assert "caf\u00e9" in ids
    # deleting by either spelling finds it
    assert httpx.delete(base + "/v1/collections/names/documents/cafe\u0301").status_code == 200


def test_http_same_file_name_from_two_folders_is_reported(srv: tuple[str, int, Path]) -> None:
    base, _, _ = srv
    first = _upload(base, "dupes", b"a/report.txt", b"The first report is about rivers.")
    assert _job(base, first.json())["status"] == "succeeded"
    again = _upload(base, "dupes", b"a/report.txt", b"The first report, now about lakes.")
    assert again.status_code == 202 and _job(base, again.json())["result"]["updated"] == 1  # same file
    other = _upload(base, "dupes", b"b/report.txt", b"Another folder's report about mountains.")
    assert other.status_code == 409
    err = other.json()["error"]
    assert err["code"] == "document_exists" and "replace=true" in err["message"]
    replaced = _upload(base, "dupes", b"b/report.txt", b"Another folder's report.", replace=b"true")
    assert _job(base, replaced.json())["result"]["updated"] == 1
    both = _upload(base, "dupes", b"c/report.txt", b"A third report.", doc_id=b"c-report")
    assert _job(base, both.json())["status"] == "succeeded"
    docs = {
        d["doc_id"]: d["source"] for d in httpx.get(base + "/v1/collections/dupes/documents").json()["data"]
    }
    assert docs == {"report.txt": "b/report.txt", "c-report": "c/report.txt"}


def test_http_upload_queue_is_bounded_and_jobs_cancel(srv: tuple[str, int, Path]) -> None:
    base, _, _ = srv
    long_doc = {"documents": [{"id": "long", "text": paragraphs(150, seed=7, per_paragraph=8)}]}
    running = httpx.post(base + "/v1/collections/queue/documents", json=long_doc, timeout=30).json()
    small = {"documents": [{"id": "s", "text": "A small note."}]}
    queued = [httpx.post(base + "/v1/collections/queue/documents", json=small).json() for _ in range(2)]
    assert all(q["status"] == "queued" for q in queued)
    full = httpx.post(base + "/v1/collections/queue/documents", json=small)
    assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
    assert "server.max_queued_jobs" in full.json()["error"]["message"]

    cancelled = httpx.post(f"{base}/v1/jobs/{queued[0]['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    stop = httpx.post(f"{base}/v1/jobs/{running['id']}/cancel").json()
    assert stop["status"] in ("cancelling", "cancelled")
    assert _job(base, running)["status"] == "cancelled"
    done = _job(base, queued[1])
    assert done["status"] == "succeeded"
    again = httpx.post(f"{base}/v1/jobs/{done['id']}/cancel")
    assert again.status_code == 409
    assert httpx.post(base + "/v1/jobs/job-nope/cancel").status_code == 404


def test_http_async_job_body_is_bounded(srv: tuple[str, int, Path]) -> None:
    base, _, _ = srv
    body = {"model": "local", "messages": [{"role": "user", "content": "hi"}], "extra": "x" * 100_000}
    r = httpx.post(base + "/v1/async/chat/completions", json=body)
    assert r.status_code == 413 and "server.max_job_bytes" in r.json()["error"]["message"]


def _proc_counts(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_http_collection_churn_under_a_low_descriptor_limit(srv: tuple[str, int, Path]) -> None:
    """Create collections up to the cap with only 256 descriptors: no 500, descriptors and
    threads stay bounded (unbounded: 5 descriptors and 8 threads held per collection), the cap
    answers 403 naming its setting, and an evicted collection still serves."""
    base, pid, _ = srv
    fds0, threads0 = _proc_counts(pid)
    existing = len(httpx.get(base + "/v1/collections").json()["data"])
    statuses = []
    for i in range(MAX_COUNT - existing):
        statuses.append(
            httpx.post(base + "/v1/collections", json={"name": f"churn-{i}"}, timeout=30).status_code
        )
    assert set(statuses) == {201}
    fds1, threads1 = _proc_counts(pid)
    assert fds1 - fds0 <= 8 * MAX_OPEN and threads1 - threads0 <= 4 * MAX_OPEN, (
        fds0,
        fds1,
        threads0,
        threads1,
    )
    over = httpx.post(base + "/v1/collections", json={"name": "one-too-many"})
    assert over.status_code == 403 and "collections.max_count" in over.json()["error"]["message"]
    # the first collections were closed long ago: they reopen on use
    job = httpx.post(
        base + "/v1/collections/churn-0/documents",
        json={"documents": [{"id": "n", "text": "Notes on rivers."}]},
    ).json()
    assert _job(base, job)["status"] == "succeeded"
    hits = httpx.post(base + "/v1/collections/churn-0/search", json={"query": "rivers"}).json()["data"]
    assert hits and hits[0]["metadata"]["doc_id"] == "n"
    assert httpx.delete(base + "/v1/collections/churn-1").status_code == 200
    assert _proc_counts(pid)[0] < NOFILE - 32


def test_report_lists_are_bounded() -> None:
    from ragline.server.jobs import bounded_report

    report = {"failed": [{"path": str(i), "reason": "x"} for i in range(500)], "warnings": []}
    out = bounded_report(report)
    assert len(out["failed"]) == 100 and out["failed_total"] == 500 and out["warnings_total"] == 0


def test_pdf_builder_is_valid(tmp_path: Path) -> None:
    """The hostile PDFs are well-formed otherwise: pypdf itself reads them (slowly, by reference)."""
    from pypdf import PdfReader

    assert len(PdfReader(io.BytesIO(pdf_repeated_page(50))).pages) == 50


_THOUSANDS = """
import os, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
from ragline import Engine
from ragline.config import load_settings
data, n = Path(sys.argv[1]), int(sys.argv[2])
engine = Engine(load_settings(data_dir=data, collections={"max_count": n, "max_per_tenant": n}))
peak_fds = peak_threads = 0
for i in range(n):
    engine.collection(f"c{i}", create=True)
    if i % 50 == 0:
        peak_fds = max(peak_fds, len(os.listdir("/proc/self/fd")))
        peak_threads = max(peak_threads, len(os.listdir("/proc/self/task")))  # native ones included
for i in range(0, n, 97):  # evicted collections reopen on use
    assert engine.documents(collection=f"c{i}") == []
assert len(engine.collections()) == n
print(peak_fds, peak_threads, len(engine.open_collections()))
"""


@pytest.mark.slow
def test_a_thousand_collections_under_128_descriptors(tmp_path: Path) -> None:
    """Before: with 256 descriptors the 49th collection failed, and each open one kept 8 engine threads."""
    run = subprocess.run(
        [sys.executable, "-c", _THOUSANDS, str(tmp_path / "data"), "1000"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    peak_fds, peak_threads, still_open = map(int, run.stdout.split())
    assert peak_fds < 128 and still_open <= 16
    assert peak_threads < 100, f"{peak_threads} threads for {still_open} open collections"
