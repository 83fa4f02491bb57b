"""Request-side bounds and error hygiene (issue 19, part A), against a real `ragline serve` on loopback.

Every input that costs work is bounded by a ``server.*`` setting and refused with a 400 naming
it; a large embeddings request neither stalls the event loop nor holds the model for a small
one; abandoned work (a client that disconnected) is cancelled; malformed JSON is a 400, never a
500; and an upstream's failure names the deployment and the kind of failure, nothing else.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import RAGLINE, free_port, ragline_server
from ragline.answer.llm import Completion, LlamaCppLLM
from ragline.gateway.deployment import Timeouts
from ragline.gateway.errors import UpstreamStatusError, UpstreamTimeout
from ragline.gateway.local import LocalDeployment
from ragline.server.batching import DynamicBatcher

EMBED_MODEL = "all-MiniLM-L6-v2"
#: The test server's embedding token limit (the default is 65,536: 2048 x 32 tokens).
MAX_EMBEDDING_TOKENS = 8192
MSG = [{"role": "user", "content": "Say hi."}]


@dataclass
class Server:
    base: str
    log: Path
    dead_port: int


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hardening")
    data = tmp / "data"
    docs = tmp / "docs"
    docs.mkdir()
    (docs / "glaciers.md").write_text(
        "# Glaciers\n\nA glacier is a persistent body of dense ice that moves under its own weight. "
        "Glaciers form where snow accumulates faster than it melts.\n"
    )
    dead = free_port()  # nothing listens there
    config = {
        "gateway": {
            "deployments": [
                {
                    "name": "d1",
                    "base_url": f"http://user:password@127.0.0.1:{dead}/v1",
                    "model": "m",
                    "health_check": False,
                }
            ],
            "models": {"gw": {"deployments": ["d1"]}, "capped": {"deployments": ["d1"], "max_tokens": 8192}},
            "retry": {"max_attempts": 1},
        }
    }
    (tmp / "ragline.yaml").write_text(yaml.safe_dump(config))
    env = {
        "RAGLINE_CONFIG": str(tmp / "ragline.yaml"),
        "RAGLINE_DATA_DIR": str(data),
        "RAGLINE_LLM__N_PARALLEL": "1",  # one slot: a generation that kept running would block the next
        "RAGLINE_LLM__THREADS": "1",
        "RAGLINE_LLM__MAX_TOKENS": "16",
        "RAGLINE_SERVER__MAX_EMBEDDING_TOKENS": str(MAX_EMBEDDING_TOKENS),
        "RAGLINE_SERVER__MAX_MESSAGES": "64",
        "RAGLINE_SERVER__MAX_PROMPT_TOKENS": "4096",
        "RAGLINE_SERVER__MAX_QUERY_CHARS": "256",
        "RAGLINE_SERVER__MAX_FILTERS": "4",
    }
    subprocess.run(
        [RAGLINE, "ingest", str(docs), "--collection", "ice"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    with ragline_server(data, env) as base:
        yield Server(base, data / "server.log", dead)


def _post(server: Server, path: str, body: Any, timeout: float = 60) -> httpx.Response:
    return httpx.post(server.base + path, json=body, timeout=timeout)


def _raw(server: Server, path: str, content: bytes) -> httpx.Response:
    return httpx.post(
        server.base + path, content=content, headers={"content-type": "application/json"}, timeout=60
    )


def _refused(r: httpx.Response, setting: str, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == 400, (r.status_code, r.text)
    err: dict[str, Any] = r.json()["error"]
    assert setting in err["message"], err
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    return err


def _metric(server: Server, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(server.base + "/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# -- limits ---------------------------------------------------------------------------------------


def test_embedding_inputs_are_bounded(server: Server) -> None:
    r = _post(server, "/v1/embeddings", {"model": EMBED_MODEL, "input": ["a"] * 2049})
    assert _refused(r, "server.max_embedding_inputs", "input")["code"] == "too_many_inputs"
    r = _post(server, "/v1/embeddings", {"model": EMBED_MODEL, "input": ["ok", "x" * 32769]})
    _refused(r, "server.max_embedding_input_chars", "input")
    # 300 inputs of 40 word pieces (+2 each): 12,600 tokens > 8,192
    r = _post(server, "/v1/embeddings", {"model": EMBED_MODEL, "input": ["glacier " * 40] * 300})
    assert _refused(r, "server.max_embedding_tokens", "input")["code"] == "too_many_tokens"
    # long inputs count as the model reads them (at most 256 word pieces each): 32 x 256 is allowed
    r = _post(server, "/v1/embeddings", {"model": EMBED_MODEL, "input": ["glacier " * 1000] * 32})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 32 * 256


def test_chat_messages_prompt_and_max_tokens_are_bounded(server: Server) -> None:
    many = [{"role": "user", "content": "hi"}] * 65
    _refused(
        _post(server, "/v1/chat/completions", {"model": "local", "messages": many}), "server.max_messages"
    )
    big = [{"role": "user", "content": "word " * 4000}]  # 20,000 characters: about 5,000 tokens
    for model in ("local", "gw", "rag/ice"):
        r = _post(server, "/v1/chat/completions", {"model": model, "messages": big})
        assert _refused(r, "server.max_prompt_tokens", "messages")["code"] == "context_length_exceeded"
    for model in ("local", "rag/ice"):
        for field in ("max_tokens", "max_completion_tokens"):
            body = {"model": model, "messages": MSG, field: 2**31 - 1}
            err = _refused(_post(server, "/v1/chat/completions", body), "llm.n_ctx", "max_tokens")
            assert err["code"] == "max_tokens_too_large"
        stream = {"model": model, "messages": MSG, "max_tokens": 4097, "stream": True}
        _refused(_post(server, "/v1/chat/completions", stream), "llm.n_ctx")
    # a gateway model with a configured cap is refused before any upstream call
    for stream in (False, True):
        body = {"model": "capped", "messages": MSG, "max_tokens": 8193, "stream": stream}
        err = _refused(_post(server, "/v1/chat/completions", body), "gateway.models.capped.max_tokens")
        assert err["code"] == "max_tokens_too_large"
        # one without a cap of its own: gateway.max_tokens (262144), not 2^31-1 sent upstream
        body = {"model": "gw", "messages": MSG, "max_tokens": 2**31 - 1, "stream": stream}
        err = _refused(_post(server, "/v1/chat/completions", body), "gateway.max_tokens")
        assert err["code"] == "max_tokens_too_large"
    r = _post(server, "/v1/completions", {"model": "local", "prompt": "Hello", "max_tokens": 5000})
    _refused(r, "llm.n_ctx", "max_tokens")
    r = _post(server, "/v1/completions", {"model": "local", "prompt": "word " * 4000})
    _refused(r, "server.max_prompt_tokens", "prompt")
    # async jobs are refused up front, not failed later
    r = _post(server, "/v1/async/chat/completions", {"model": "local", "messages": many})
    _refused(r, "server.max_messages")


def test_search_and_rag_questions_are_bounded(server: Server) -> None:
    search = server.base + "/v1/collections/ice/search"
    ok = httpx.post(search, json={"query": "what is a glacier", "top_k": 100})
    assert ok.status_code == 200 and ok.json()["data"]
    r = httpx.post(search, json={"query": "glacier", "top_k": 101})
    assert _refused(r, "server.max_search_top_k", "top_k")["code"] == "top_k_too_large"
    _refused(httpx.post(search, json={"query": "g" * 257}), "server.max_query_chars", "query")
    filters = [f"k{i}=v" for i in range(5)]
    _refused(
        httpx.post(search, json={"query": "glacier", "filters": filters}), "server.max_filters", "filters"
    )
    long_question = [{"role": "user", "content": "what is a glacier " * 20}]
    r = _post(server, "/v1/chat/completions", {"model": "rag/ice", "messages": long_question})
    _refused(r, "server.max_query_chars", "messages")
    body = {"model": "local", "messages": MSG, "rag": {"collection": "ice", "filters": filters}}
    _refused(_post(server, "/v1/chat/completions", body), "server.max_filters", "rag.filters")


# -- the embeddings case: responsive, fair, cancelled when abandoned ---------------------------------


def _largest_allowed() -> dict[str, Any]:
    # 2048 inputs (server.max_embedding_inputs) of 2 word pieces + 2: exactly the token limit
    inputs = [f"glacier {i}" if i < 10 else "glacier ice" for i in range(2048)]
    return {"model": EMBED_MODEL, "input": inputs, "encoding_format": "float"}


def _probe_while_embedding(server: Server) -> tuple[httpx.Response, float, list[float], list[float]]:
    """Run the largest allowed request; meanwhile time /health/live every 10 ms and, in another
    thread, 1-input embeddings requests. (response, its seconds, live latencies, 1-input latencies)"""
    body = _largest_allowed()
    result: dict[str, Any] = {}

    def big() -> None:
        t0 = time.perf_counter()
        result["response"] = httpx.post(server.base + "/v1/embeddings", json=body, timeout=120)
        result["seconds"] = time.perf_counter() - t0

    def smalls() -> None:  # one at a time, beside the probes
        with httpx.Client(base_url=server.base, timeout=120) as http:
            while worker.is_alive() and len(small) < 3:
                t0 = time.perf_counter()
                r = http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": "a small request"})
                assert r.status_code == 200
                small.append(time.perf_counter() - t0)
                time.sleep(0.2)

    worker = threading.Thread(target=big)
    prober = threading.Thread(target=smalls)
    live: list[float] = []
    small: list[float] = []
    # the server is being timed, not this process: a full collection of pytest's heap took 250 ms
    gc.collect()
    gc.disable()
    try:
        with httpx.Client(base_url=server.base, timeout=10) as http:
            http.get("/health/live")  # the connection is open before timing
            worker.start()
            time.sleep(0.2)  # the big request is being embedded
            prober.start()
            while worker.is_alive():
                t0 = time.perf_counter()
                assert http.get("/health/live").status_code == 200
                live.append(time.perf_counter() - t0)
                time.sleep(0.01)
        worker.join()
        prober.join()
    finally:
        gc.enable()
    return result["response"], result["seconds"], live, small


def test_largest_embedding_request_keeps_the_server_responsive_and_fair(server: Server) -> None:
    # Before the fix the response was built on the event loop: /health/live stalled 130-160 ms at
    # this size on every run (10 s with 80,000 inputs). One more try forgives a hiccup of the
    # shared 2-core test machine, not a stall that happens every time.
    for _attempt in (1, 2):
        r, seconds, live, small = _probe_while_embedding(server)
        assert r.status_code == 200, r.text
        print(
            f"big request {seconds:.2f} s; /health/live max {max(live) * 1000:.1f} ms over "
            f"{len(live)}; 1-input requests {[round(s, 3) for s in small]} s"
        )
        assert len(live) >= 5, "the big request ended before it could be probed"
        if max(live) < 0.1:
            break
    assert max(live) < 0.1, sorted(live)[-5:]
    payload = r.json()
    assert len(payload["data"]) == 2048 and [d["index"] for d in payload["data"][:3]] == [0, 1, 2]
    assert payload["usage"]["prompt_tokens"] == MAX_EMBEDDING_TOKENS
    vectors = np.array([d["embedding"] for d in payload["data"][:2]], dtype=np.float32)
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    # a 1-input request waits for one batch, not for the whole big request
    assert small and max(small) < seconds / 2, (small, seconds)


def test_abandoned_embedding_request_is_dropped(server: Server) -> None:
    before = _metric(server, "ragline_embedding_batch_size_sum")
    gone = _metric(server, "ragline_requests_total", route="/v1/embeddings", status="499")
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.base + "/v1/embeddings", json=_largest_allowed(), timeout=0.4)
    deadline = time.monotonic() + 10
    while _metric(server, "ragline_requests_total", route="/v1/embeddings", status="499") == gone:
        assert time.monotonic() < deadline, "the server did not notice the client leave"
        time.sleep(0.05)
    time.sleep(0.3)  # the batch that was running when the client left ends
    embedded = _metric(server, "ragline_embedding_batch_size_sum") - before
    assert embedded < 2048, embedded  # the batches not yet run were dropped
    t0 = time.perf_counter()
    r = _post(server, "/v1/embeddings", {"model": EMBED_MODEL, "input": "still serving"})
    assert r.status_code == 200 and time.perf_counter() - t0 < 1.0
    assert _metric(server, "ragline_embedding_batch_size_sum") - before < 2048


def test_batcher_splits_large_requests_takes_turns_and_drops_abandoned_ones() -> None:
    """The batcher in-process: bounded batches (texts and weight), fairness, cancellation."""
    calls: list[list[str]] = []

    def fn(texts: list[str]) -> list[str]:
        time.sleep(0.02)
        calls.append(list(texts))
        return [t.upper() for t in texts]

    async def run() -> None:
        b: DynamicBatcher[str] = DynamicBatcher(
            fn, max_batch_size=4, max_wait_ms=1, weight=len, max_batch_weight=10
        )
        big = asyncio.ensure_future(b.submit([f"b{i:02d}" for i in range(20)]))  # weight 3 each
        await asyncio.sleep(0.005)  # the first batch is running
        small, _ = await b.submit(["s"])
        assert small == ["S"] and not big.done()  # served before the whole big request
        assert (await big)[0] == [f"B{i:02d}" for i in range(20)]
        assert all(len(c) <= 4 and (sum(map(len, c)) <= 10 or len(c) == 1) for c in calls), calls
        assert (await b.submit(["x" * 50, "y"]))[0] == ["X" * 50, "Y"]  # too heavy for a batch: alone
        assert calls[-2:] == [["x" * 50], ["y"]]
        calls.clear()
        gone = asyncio.ensure_future(b.submit([f"g{i:02d}" for i in range(40)]))
        await asyncio.sleep(0.03)  # a batch or two have run
        gone.cancel()
        assert (await b.submit(["after"]))[0] == ["AFTER"]
        await asyncio.sleep(0.05)
        embedded = sum(len(c) for c in calls if c[0].startswith("g"))
        assert embedded <= 12, calls  # the rest of the abandoned request was never run
        await b.close()

    asyncio.run(run())


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_abandoned_local_generation_stops(server: Server, path: str) -> None:
    """One llama.cpp slot: had the abandoned generation (up to 2000 tokens, about a minute on one
    thread) kept running, the next request would wait for it."""
    if path == "/v1/chat/completions":
        prompt = "Write a very long story about a dragon, at least 2000 words."
        body: dict[str, Any] = {"model": "local", "messages": [{"role": "user", "content": prompt}]}
    else:
        body = {"model": "local", "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"}
    body["max_tokens"] = 2000
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.base + path, json=body, timeout=1.5)
    t0 = time.perf_counter()
    r = _post(server, "/v1/chat/completions", {"model": "local", "messages": MSG, "max_tokens": 4})
    assert r.status_code == 200
    assert time.perf_counter() - t0 < 8, "the abandoned generation kept its slot"


def test_a_gateway_local_deployment_stops_the_generation_it_gave_up_on(llm: LlamaCppLLM) -> None:
    """A kind=local deployment's non-streamed call that times out stops its llama.cpp generation."""
    finished = threading.Event()
    result: dict[str, Completion] = {}

    async def run_in_thread(fn: Callable[[], Completion]) -> Completion:
        def watched() -> Completion:
            result["completion"] = fn()
            finished.set()
            return result["completion"]

        return await asyncio.to_thread(watched)

    deployment = LocalDeployment(
        "loc", lambda: llm, timeouts=Timeouts(total=1.0), run_in_thread=run_in_thread, n_ctx=4096
    )
    story = [{"role": "user", "content": "Write a very long story about a dragon, at least 2000 words."}]

    async def run() -> None:
        with pytest.raises(UpstreamTimeout):
            await deployment.complete({"messages": story, "max_tokens": 2000}, budget=10)
        with pytest.raises(UpstreamStatusError) as exc:
            await deployment.complete({"messages": story, "max_tokens": 5000}, budget=10)
        assert exc.value.status == 400 and "llm.n_ctx" in exc.value.message

    asyncio.run(run())
    assert finished.wait(10), "the abandoned generation kept running"
    assert result["completion"].finish_reason == "cancelled"
    assert result["completion"].completion_tokens < 2000


# -- 500s that are 400s ------------------------------------------------------------------------------


def test_deeply_nested_json_is_a_400(server: Server) -> None:
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/completions"):
        r = _raw(server, path, b"[" * 3000)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    for depth in (200, 3000):  # past what can be passed on (128 levels), then past the parsers' limits
        nested = "[" * depth + "]" * depth
        for model in ("gw", "local"):
            content = (
                f'{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}], "x": {nested}}}'
            )
            r = _raw(server, "/v1/chat/completions", content.encode())
            assert r.status_code == 400, (model, depth, r.status_code, r.text)


def test_unpaired_surrogates_are_a_400(server: Server) -> None:
    msg = '[{"role": "user", "content": "hi"}]'
    bodies = [
        f'{{"model": "gw", "messages": {msg}, "metadata": {{"note": "\\ud800"}}}}',  # a pass-through field
        f'{{"model": "gw", "messages": {msg}, "user": "\\udc00x"}}',
        '{"model": "gw", "messages": [{"role": "user", "content": "hi", "name": "\\ud800"}]}',
        f'{{"model": "gw", "messages": {msg}, "tools": [{{"type": "function", "x": ["\\ud800"]}}]}}',
        f'{{"model": "gw\\ud800", "messages": {msg}}}',
        f'{{"model": "gw", "messages": {msg}, "x": NaN, "y": "\\ud800"}}',  # orjson refuses; json takes NaN
    ]
    for body in bodies:
        r = _raw(server, "/v1/chat/completions", body.encode())
        assert r.status_code == 400, (body, r.status_code, r.text)
        message = r.json()["error"]["message"]
        assert "surrogate" in message or "unicode string" in message, message
    r = _raw(
        server, "/v1/embeddings", f'{{"model": "{EMBED_MODEL}", "input": "a", "user": "\\ud800"}}'.encode()
    )
    assert r.status_code == 400


# -- errors carry no secrets, addresses or exception names -------------------------------------------

_LEAKS = ("password", "user:", "127.0.0.1", "http://", "Error", "Errno", "refused", "/tmp", "Traceback")


def test_unreachable_upstream_names_the_deployment_only(server: Server) -> None:
    r = _post(server, "/v1/chat/completions", {"model": "gw", "messages": MSG})
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert "deployment 'd1' unreachable (connect failed)" in message, message
    assert not [leak for leak in _LEAKS if leak in message], message
    # streamed: the same error, before the stream starts
    r = _post(server, "/v1/chat/completions", {"model": "gw", "messages": MSG, "stream": True})
    assert r.status_code == 503 and "deployment 'd1' unreachable" in r.json()["error"]["message"]
    assert not [leak for leak in _LEAKS if leak in r.text], r.text
    # the details are in the log, with the URL's credentials masked
    log = server.log.read_text()
    assert f"http://***@127.0.0.1:{server.dead_port}/v1" in log, log[-2000:]
    assert "password" not in log


def test_error_bodies_are_openai_shaped_and_clean(server: Server) -> None:
    """A sample of 4xx bodies from the cases above: the shape, and nothing internal in them."""
    responses = [
        _post(server, "/v1/chat/completions", {"model": "nope", "messages": MSG}),
        _post(server, "/v1/embeddings", {"model": EMBED_MODEL, "input": ["a"] * 5000}),
        _raw(server, "/v1/chat/completions", b"[" * 3000),
        _raw(server, "/v1/chat/completions", b'{"model": "gw", "messages": [], "x": "\\ud800"}'),
        httpx.post(server.base + "/v1/collections/ice/search", json={"query": "q", "top_k": 5000}),
    ]
    for r in responses:
        assert 400 <= r.status_code < 500, r.text
        err = json.loads(r.text)["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert not [leak for leak in _LEAKS if leak in err["message"]], err
