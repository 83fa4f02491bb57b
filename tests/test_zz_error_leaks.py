"""Runs last (conftest orders it so): no error the suite received leaks internals.

It cannot pass by seeing nothing: the first test proves the hooks record each kind of error (an
error body, read whole or streamed; a failed job's ``error``; an error event in a stream) through
both httpx clients and the openai client, and the audit fails when the hooks were replaced, or
when other tests received responses but no error was recorded. Run alone, with nothing to audit,
it skips and says why.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

import error_audit

MODULE = "test_zz_error_leaks.py::"

_ROUTES: dict[str, tuple[int, str, bytes]] = {
    "/err": (418, "application/json", b'{"error": {"message": "a clean refusal", "type": "x"}}'),
    "/v1/jobs/job-1": (200, "application/json", b'{"id": "job-1", "status": "failed", "error": "a reason"}'),
    "/v1/jobs/job-2": (200, "application/json", b'{"id": "job-2", "status": "succeeded", "error": null}'),
    "/sse": (
        200,
        "text/event-stream",
        b'data: {"choices": []}\n\ndata: {"error": {"message": "the stream broke"}}\n\ndata: [DONE]\n\n',
    ),
}


_ROUTES["/v1/chat/completions"] = _ROUTES["/sse"]
_ROUTES["/v1/embeddings"] = _ROUTES["/err"]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.do_GET()

    def do_GET(self) -> None:
        status, ctype, body = _ROUTES[self.path]
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _mine() -> list[error_audit.ErrorBody]:
    return [e for e in error_audit.RECORDED if MODULE in e.test]


def test_the_hooks_record_every_kind_of_error(local: str) -> None:
    assert error_audit.installed()
    with httpx.Client(base_url=local) as c:
        c.get("/err")
        c.get("/v1/jobs/job-1")
        c.get("/v1/jobs/job-2")  # no error: nothing recorded
        with c.stream("GET", "/err") as r:  # the openai client streams every response
            r.read()
        with c.stream("GET", "/sse") as r:
            assert len(list(r.iter_lines())) >= 3

    async def run() -> None:
        async with httpx.AsyncClient(base_url=local) as c:
            await c.get("/err")
            async with c.stream("GET", "/sse") as r:
                async for _ in r.aiter_lines():
                    pass

    asyncio.run(run())
    # the openai client is built on httpx2, a fork of httpx: its responses are recorded too
    client = openai.OpenAI(base_url=local + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError):
        client.embeddings.create(model="m", input="x")
    with pytest.raises(openai.APIError, match="the stream broke"):
        for _ in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass
    got = [(e.url.removeprefix(local), e.status, e.body) for e in _mine()]
    try:
        err = _ROUTES["/err"][2].decode()
        event = '{"error": {"message": "the stream broke"}}'
        assert got == [
            ("/err", 418, err),
            ("/v1/jobs/job-1", 200, "a reason"),
            ("/err", 418, err),
            ("/sse", 200, event),
            ("/err", 418, err),
            ("/sse", 200, event),
            ("/v1/embeddings", 418, err),
            ("/v1/chat/completions", 200, event),
        ], got
        assert all(error_audit.leaks(body) == [] for _, _, body in got)
    finally:
        error_audit.RECORDED[:] = [e for e in error_audit.RECORDED if MODULE not in e.test]


def test_no_error_body_leaks_internals() -> None:
    assert error_audit.installed(), "the httpx hooks were replaced: errors received since were not recorded"
    recorded = [e for e in error_audit.RECORDED if MODULE not in e.test]
    seen = sum(n for test, n in error_audit.SEEN.items() if MODULE not in test)
    if not recorded:
        if seen == 0:
            pytest.skip("no other test received an HTTP response in this run: nothing to audit")
        pytest.fail(
            f"other tests received {seen} responses but no error was recorded: the audit would pass "
            "without checking anything (are the hooks in conftest.py still installed?)"
        )
    jobs = sum(1 for e in recorded if e.status < 400 and "/v1/jobs" in e.url)
    events = sum(1 for e in recorded if e.status < 400 and "/v1/jobs" not in e.url)
    print(f"audited {len(recorded)} errors ({jobs} job errors, {events} stream events) of {seen} responses")
    found = [(e, what) for e in recorded for what in error_audit.leaks(e.body)]
    report = "\n".join(
        f"- {e.test}: {e.method} {e.url} -> {e.status} carries {what}: {e.body[:300]!r}" for e, what in found
    )
    assert not found, f"{len(found)} of {len(recorded)} recorded errors leak internals:\n{report}"


@pytest.mark.parametrize(
    ("body", "kinds"),
    [
        (
            "cannot connect to http://user:password@10.1.2.3:8000/v1: "
            "ConnectError: ConnectionRefusedError: [Errno 111]",
            {"URL credentials", "an exception class name", "an errno", "an internal address"},
        ),
        ("redis at localhost:6379 refused", {"a host and port"}),
        ("cannot reach db.internal.example:5432", {"a host and port"}),
        ("upstream 127.0.0.1:45123 closed", {"an internal address"}),
        ("cannot read /tmp/ragline-upload-x1y2/report.pdf", {"a server file path"}),
        ("failed in /srv/ragline/src/ragline/engine.py", {"a server file path"}),
        ("Service internal error: Shard is not initialized", {"an engine internal"}),
        ("bad key rl-abcdefghij12_Zk3vR8pQ2mN7xW1yT5uL9oB4cE6hJ0sA3dF8gK2nM7q", {"a secret"}),
        ("raised TimeoutException while waiting", {"an exception class name"}),
        ("got <class 'KeyError'>", {"a Python repr", "an exception class name"}),
    ],
)
def test_the_patterns_catch_leaks(body: str, kinds: set[str]) -> None:
    assert set(error_audit.leaks(body)) >= kinds, error_audit.leaks(body)


@pytest.mark.parametrize(
    "body",
    [
        '{"error": {"message": "deployment \'a\' is unreachable (connect failed)"}}',
        "invalid API key rl-abcdefghij12_… (revoked)",
        "unsupported file type for 'notes.py'",
        "the limit of 2 collections per tenant is reached (collections.max_per_tenant)",
        "too many unfinished jobs: at most 16 per API key (server.max_jobs_per_key); retry in 5 s",
    ],
)
def test_the_patterns_stay_quiet_on_clean_errors(body: str) -> None:
    assert error_audit.leaks(body) == []


def test_job_errors_are_read_from_one_job_or_a_list() -> None:
    one = {"id": "j", "status": "failed", "error": "r"}
    assert error_audit._job_errors(json.dumps(one)) == ["r"]
    assert error_audit._job_errors(json.dumps({"data": [one, {"error": None}]})) == ["r"]
    assert error_audit._job_errors("not json") == []
