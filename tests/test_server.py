"""The OpenAI-compatible server, driven by the official openai SDK against a real `ragline serve`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parent.parent
RAGLINE = str(Path(sys.executable).parent / "ragline")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("server-data")
    docs = tmp_path_factory.mktemp("server-docs")
    (docs / "volcanoes.md").write_text(
        "# Volcanoes of Iceland\n\n## Hekla\n\nHekla is a stratovolcano in southern Iceland. "
        "It has erupted more than twenty times since the year 874 and was called the Gateway to Hell "
        "by medieval Europeans.\n\n## Katla\n\nKatla is a subglacial volcano under the Myrdalsjokull "
        "glacier. Its eruptions melt the ice and cause glacial floods called jokulhlaups.\n"
    )
    env = {**os.environ, "RAGLINE_DATA_DIR": str(data), "RAGLINE_LLM__N_PARALLEL": "2"}
    subprocess.run(
        [RAGLINE, "ingest", str(docs), "--collection", "geo"], env=env, check=True, capture_output=True
    )
    port = _free_port()
    log = (data / "server.log").open("w")
    proc = subprocess.Popen(
        [RAGLINE, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"server exited: {(data / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("server did not become ready in 120 s")
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def test_health_and_models(server: str, client: openai.OpenAI) -> None:
    assert httpx.get(server + "/health/live").json() == {"status": "ok"}
    ids = {m.id for m in client.models.list()}
    assert {"local", "rag/geo", "all-MiniLM-L6-v2-int8"} <= ids


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Say hello in one word."}], max_tokens=8, seed=1
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text.strip()
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


async def test_async_client(server: str) -> None:
    aclient = openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    r = await aclient.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert r.choices[0].message.content is not None
    e = await aclient.embeddings.create(model="all-MiniLM-L6-v2", input="hello")
    assert len(e.data[0].embedding) == 384


def test_rag_answer_carries_citations(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="rag/geo", messages=[{"role": "user", "content": "What do Katla eruptions cause?"}]
    )
    body = r.model_dump()
    assert body["citations"], body
    assert all(c["doc_id"].endswith("volcanoes.md") for c in body["citations"])
    assert r.choices[0].message.content


def test_rag_answer_honours_max_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="rag/geo",
        messages=[{"role": "user", "content": "What do Katla eruptions cause?"}],
        max_tokens=3,
    )
    assert r.usage is not None and 1 <= r.usage.completion_tokens <= 3, r.usage


def test_rag_stream_sends_citations_before_done(server: str) -> None:
    payload = {
        "model": "rag/geo",
        "stream": True,
        "messages": [{"role": "user", "content": "Which volcano was called the Gateway to Hell?"}],
    }
    with httpx.stream("POST", server + "/v1/chat/completions", json=payload, timeout=120) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][6:])
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["citations"]


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat", "a dog"])
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 384
    assert r.usage.prompt_tokens > 0
    # the SDK requests base64 by default when numpy is present and decodes it; check raw too
    raw = httpx.post(
        str(client.base_url) + "embeddings",
        json={"model": "all-MiniLM-L6-v2", "input": "a cat", "encoding_format": "base64"},
    ).json()
    assert isinstance(raw["data"][0]["embedding"], str)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (json.dumps({"model": "local"}).encode(), 400, "messages"),
        (json.dumps({"model": "local", "messages": "hi"}).encode(), 400, "messages"),
        (
            # more choices than the model's slots (llm.n_parallel=2)
            json.dumps({"model": "local", "messages": [{"role": "user", "content": "x"}], "n": 3}).encode(),
            400,
            "n",
        ),
        (
            json.dumps(
                {"model": "local", "messages": [{"role": "user", "content": "x"}], "temperature": 9}
            ).encode(),
            400,
            "temperature",
        ),
        (
            json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(),
            404,
            "model",
        ),
        (
            json.dumps({"model": "rag/nope", "messages": [{"role": "user", "content": "x"}]}).encode(),
            404,
            "model",
        ),
    ],
)
def test_bad_requests_get_openai_errors(server: str, body: bytes, status: int, param: str | None) -> None:
    r = httpx.post(
        server + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param:
        assert err["param"] == param


def test_body_over_limit_is_413(server: str) -> None:
    big = json.dumps({"model": "local", "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]})
    r = httpx.post(server + "/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "server.max_body_bytes" in r.json()["error"]["message"]


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="all-MiniLM-L6-v2", input="")


def test_context_too_long_is_400(client: openai.OpenAI) -> None:
    long = "word " * 30000
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": long}], max_tokens=4
        )
    assert exc.value.status_code == 400


def _wait_job(server: str, job: dict[str, object]) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        cur = httpx.get(f"{server}/v1/jobs/{job['id']}").json()
        if cur["status"] in ("succeeded", "failed"):
            return dict(cur)
        time.sleep(0.2)
    pytest.fail(f"job {job['id']} did not finish")


def test_knowledge_endpoints_upload_search_delete(server: str) -> None:
    assert httpx.post(server + "/v1/collections", json={"name": "kb"}).status_code == 201
    assert "kb" in {c["id"] for c in httpx.get(server + "/v1/collections").json()["data"]}
    docs = {
        "documents": [
            {
                "id": "tea",
                "title": "Tea",
                "text": "Green tea is made from unoxidised leaves.",
                "metadata": {"lang": "en"},
            },
            {
                "id": "coffee",
                "title": "Coffee",
                "text": "Espresso is brewed by forcing hot water through coffee.",
            },
        ]
    }
    r = httpx.post(server + "/v1/collections/kb/documents", json=docs)
    assert r.status_code == 202
    job = _wait_job(server, r.json())
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["added"] == 2  # type: ignore[index]
    assert job["progress"]["documents"] == 2  # type: ignore[index]
    hits = httpx.post(
        server + "/v1/collections/kb/search", json={"query": "espresso brewing", "top_k": 1}
    ).json()
    assert hits["data"][0]["metadata"]["doc_id"] == "coffee"
    only_en = httpx.post(
        server + "/v1/collections/kb/search", json={"query": "drink", "filters": ["lang=en"]}
    ).json()["data"]
    assert {h["metadata"]["doc_id"] for h in only_en} == {"tea"}
    files = {"file": ("notes.md", b"# Notes\n\nThe meeting moved to Thursday at noon.\n", "text/markdown")}
    job = _wait_job(server, httpx.post(server + "/v1/collections/kb/files", files=files).json())
    assert job["status"] == "succeeded", job["error"]
    listed = {d["doc_id"] for d in httpx.get(server + "/v1/collections/kb/documents").json()["data"]}
    assert listed == {"tea", "coffee", "notes.md"}
    assert httpx.delete(server + "/v1/collections/kb/documents/coffee").json()["deleted"] is True
    hits = httpx.post(server + "/v1/collections/kb/search", json={"query": "espresso", "top_k": 5}).json()[
        "data"
    ]
    assert "coffee" not in {h["metadata"]["doc_id"] for h in hits}


def test_knowledge_errors(server: str) -> None:
    assert httpx.get(server + "/v1/jobs/job-missing").status_code == 404
    r = httpx.post(server + "/v1/collections/nope/search", json={"query": "x"})
    assert r.status_code == 404 and r.json()["error"]["message"]
    assert httpx.post(server + "/v1/collections/geo/search", json={"top_k": 3}).status_code == 400
    assert httpx.post(server + "/v1/collections", json={"name": "../etc"}).status_code == 400
    bad = httpx.post(server + "/v1/collections/geo/search", json={"query": "x", "filters": ["???"]})
    assert bad.status_code == 400
    files = {"file": ("evil.exe", b"MZ\x00\x00", "application/octet-stream")}
    assert httpx.post(server + "/v1/collections/geo/files", files=files).status_code == 400
