"""The response cache: what is filed together, what is served, and that no answer outlives its sources.

Unit tests drive ``ResponseCache`` over the in-process store with the real embedder; the HTTP tests
run a real ``ragline serve`` (real embedder, real LLM, a fault-injecting upstream for the gateway
model, whose request count shows when the cache answered instead).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import yaml

from conftest import free_port, ragline_process
from ragline.cache.base import CacheStore
from ragline.cache.keys import deterministic, request_key
from ragline.cache.memory import MemoryCacheStore
from ragline.cache.redis import RedisCacheStore
from ragline.cache.service import ResponseCache
from ragline.config import CacheSettings
from ragline.embed.onnx import OnnxEmbedder
from ragline.state.redis import RedisState

HERE = Path(__file__).resolve().parent
ADMIN = "admin-" + "c" * 40


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


# -- keys --------------------------------------------------------------------------------------------


def test_exact_key_ignores_transport_and_surrounding_whitespace() -> None:
    a = request_key("t", None, _chat("Hello there", temperature=0))
    b = request_key("t", None, _chat("  Hello there\n", temperature=0, stream=True, user="u1"))
    assert a.exact == b.exact


@pytest.mark.parametrize(
    "other",
    [
        _chat("Hello there", temperature=0.5),
        _chat("Hello there", temperature=0, max_tokens=5),
        _chat("Hello there", temperature=0, seed=3),
        _chat("Hello there", temperature=0, response_format={"type": "json_object"}),
        {**_chat("Hello there", temperature=0), "model": "other"},
        _chat("hello there", temperature=0),
    ],
)
def test_exact_key_changes_with_anything_that_changes_the_output(other: dict[str, Any]) -> None:
    assert (
        request_key("t", None, _chat("Hello there", temperature=0)).exact
        != request_key("t", None, other).exact
    )


def test_keys_are_scoped_by_tenant_and_collection() -> None:
    body = _chat("Hello there")
    keys = {request_key(t, c, body).exact for t in ("a", "b") for c in (None, "x", "y")}
    assert len(keys) == 6


def test_scope_is_the_request_without_its_question() -> None:
    sys_msg = {"role": "system", "content": "Be brief."}
    one = request_key("t", "c", {"model": "m", "messages": [sys_msg, {"role": "user", "content": "a?"}]})
    two = request_key("t", "c", {"model": "m", "messages": [sys_msg, {"role": "user", "content": "b?"}]})
    assert one.scope == two.scope and one.exact != two.exact and one.question == "a?"
    other_system = request_key(
        "t",
        "c",
        {
            "model": "m",
            "messages": [{"role": "system", "content": "Be long."}, {"role": "user", "content": "a?"}],
        },
    )
    assert other_system.scope != one.scope
    assistant_last = request_key(
        "t", None, {"model": "m", "messages": [{"role": "assistant", "content": "x"}]}
    )
    assert assistant_last.question is None


def test_only_deterministic_requests_are_cached_by_default() -> None:
    assert deterministic({"temperature": 0}, None)
    assert deterministic({"temperature": 0.7, "seed": 1}, None)
    assert not deterministic({}, None)  # an upstream's default temperature samples
    assert deterministic({}, 0.0)  # the local model's setting
    assert not deterministic({"temperature": 0.7}, 0.0)


# -- the service over the in-process store ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # Redis expires entries by the wall clock too

    def __call__(self) -> float:
        return self.now


Make = Callable[..., Awaitable[tuple[ResponseCache, Clock]]]


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest, embedder: OnnxEmbedder) -> AsyncIterator[Make]:
    """Builds caches over the in-process store or a real Redis (one key prefix per test)."""
    made: list[tuple[ResponseCache, RedisState | None]] = []
    prefix = f"t{uuid.uuid4().hex[:12]}"

    async def build(versions: dict[str, str] | None = None, **settings: Any) -> tuple[ResponseCache, Clock]:
        clock = Clock()
        current = versions if versions is not None else {}

        async def embed(q: str) -> Any:
            return embedder.embed_queries([q])[0]

        async def vers(collection: str, ids: Any) -> dict[str, str]:
            return {d: current[d] for d in ids if d in current}

        max_entries = settings.pop("max_entries", 100)
        state: RedisState | None = None
        store: CacheStore
        if request.param == "memory":
            store = MemoryCacheStore(max_entries=max_entries, dim=lambda: embedder.dim)
        else:
            state = RedisState(request.getfixturevalue("redis_url"), prefix)
            await state.open()
            store = RedisCacheStore(state, max_entries=max_entries, dim=lambda: embedder.dim)
        await store.start()
        cache = ResponseCache(CacheSettings(**settings), store, embed=embed, versions=vers, clock=clock)
        made.append((cache, state))
        return cache, clock

    yield build
    for cache, state in made:
        await cache.close()
        if state is not None:
            await state.close()


def _answer(text: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "rag/kb",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


def _plan(cache: ResponseCache, question: str, *, tenant: str = "t", collection: str | None = "kb") -> Any:
    body = {"model": "rag/kb", "messages": [{"role": "user", "content": question}]}
    return cache.plan(
        request_key(tenant, collection, body),
        tenant=tenant,
        model="rag/kb",
        collection=collection,
        control=None,
    )


async def test_exact_then_semantic_hit_then_miss(make: Make) -> None:
    cache, _ = await make(semantic={"threshold": 0.9})
    q = "What is the boiling point of water at sea level?"
    first = await cache.lookup(_plan(cache, q))
    assert first.status == "miss"
    assert await cache.store(_plan(cache, q), _answer("100 C"), vector=first.vector)
    assert (await cache.lookup(_plan(cache, q))).status == "hit"
    near = await cache.lookup(_plan(cache, "what is the boiling point of water at sea level"))
    assert near.status == "semantic-hit" and near.entry is not None and near.entry.question == q
    assert near.info()["matched_question"] == q and near.info()["similarity"] >= 0.9
    assert (await cache.lookup(_plan(cache, "Who painted the Mona Lisa?"))).status == "miss"
    # another tenant, another collection: never
    assert (await cache.lookup(_plan(cache, q, tenant="u"))).status == "miss"
    assert (await cache.lookup(_plan(cache, q, collection="other"))).status == "miss"


async def test_a_rag_hit_needs_the_reworded_questions_retrieval_to_find_the_answers_sources(
    make: Make,
) -> None:
    cache, _ = await make(semantic={"threshold": 0.9})
    q = "What is the boiling point of water at sea level?"
    reworded = "what is the boiling point of water at sea level"
    found_by: dict[str, list[str]] = {q: ["c1", "c2", "c3"], reworded: ["c2", "c1", "c9"]}
    asked: list[str] = []

    async def retrieve(question: str, vector: Any) -> list[str]:
        asked.append(question)
        assert len(vector) > 0  # the question's embedding, computed once for the lookup
        return found_by[question]

    def plan(question: str) -> Any:
        body = {"model": "rag/kb", "messages": [{"role": "user", "content": question}]}
        key = request_key("t", "kb", body)
        return cache.plan(key, tenant="t", model="rag/kb", collection="kb", control=None, retrieve=retrieve)

    # built from c1 and c2 (the budget kept two): the rewording must find those two first, in any order
    await cache.store(plan(q), _answer("100 C"), retrieved=["c1", "c2"])
    hit = await cache.lookup(plan(reworded))
    assert hit.status == "semantic-hit" and asked == [reworded]
    found_by[reworded] = ["c1", "c9", "c2"]  # retrieval moved: the answer would be built from other chunks
    assert (await cache.lookup(plan(reworded))).status == "miss"
    assert (await cache.lookup(plan(q))).status == "hit"  # an exact hit asks no retrieval
    assert asked == [reworded, reworded]
    # switched off, similarity and the second check decide alone
    off, _ = await make(semantic={"threshold": 0.9, "rag_sources": False})
    await off.store(_plan(off, q), _answer("100 C"), retrieved=["c1", "c2"])
    body = {"model": "rag/kb", "messages": [{"role": "user", "content": reworded}]}
    p = off.plan(
        request_key("t", "kb", body),
        tenant="t",
        model="rag/kb",
        collection="kb",
        control=None,
        retrieve=retrieve,
    )
    assert p.retrieve is None and (await off.lookup(p)).status == "semantic-hit"


async def test_entries_expire_and_the_least_recently_used_go_first(make: Make) -> None:
    cache, clock = await make(ttl_s=60, max_entries=2)
    for q in ("one?", "two?"):
        await cache.store(_plan(cache, q), _answer(q))
    assert (await cache.lookup(_plan(cache, "one?"))).status == "hit"  # one is now the most recent
    await cache.store(_plan(cache, "three?"), _answer("three"))
    assert cache.backend.size() == 2
    assert (await cache.lookup(_plan(cache, "two?"))).status == "miss"
    assert (await cache.lookup(_plan(cache, "one?"))).status == "hit"
    clock.now += 61
    assert (await cache.lookup(_plan(cache, "one?"))).status == "miss"


async def test_an_answer_whose_source_changed_is_not_served(make: Make) -> None:
    versions = {"doc": "v1", "other": "v1"}
    cache, _ = await make(versions)
    await cache.store(_plan(cache, "q?"), _answer("a"), sources={"doc": "v1", "other": "v1"})
    assert (await cache.lookup(_plan(cache, "q?"))).status == "hit"
    versions["doc"] = "v2"
    assert (await cache.lookup(_plan(cache, "q?"))).status == "miss"
    assert cache.backend.size() == 0  # dropped, not kept for later
    await cache.store(_plan(cache, "q?"), _answer("a2"), sources={"doc": "v2", "other": "v1"})
    del versions["other"]  # deleted
    assert (await cache.lookup(_plan(cache, "q?"))).status == "miss"


async def test_purge_and_forget(make: Make) -> None:
    cache, _ = await make()
    await cache.store(_plan(cache, "a?", tenant="t1"), _answer("a"), sources={"d1": "v"})
    await cache.store(_plan(cache, "b?", tenant="t2"), _answer("b"), sources={"d2": "v"})
    await cache.store(_plan(cache, "c?", tenant="t2", collection="other"), _answer("c"))
    assert await cache.forget_documents("kb", ["d1"]) == 1
    assert await cache.purge(tenant="t2", collection="other") == 1
    assert await cache.purge() == 1
    assert cache.backend.size() == 0


async def test_incomplete_answers_are_not_kept(make: Make) -> None:
    cache, _ = await make()
    cut = _answer("partial")
    cut["choices"][0]["finish_reason"] = "length"
    assert not await cache.store(_plan(cache, "q?"), cut)
    assert not await cache.store(_plan(cache, "q?"), {"error": {"message": "x"}})


async def test_semantic_lookup_scans_no_more_than_its_scope(make: Make, embedder: OnnxEmbedder) -> None:
    """Thousands of entries in other scopes do not crowd out the one in this scope."""
    cache, _ = await make(max_entries=5000, semantic={"threshold": 0.9})
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for i, v in enumerate(vectors):
        await cache.store(_plan(cache, f"noise {i}?", collection=f"c{i % 7}"), _answer("n"), vector=v)
    q = "How tall is Mount Everest?"
    await cache.store(_plan(cache, q), _answer("8849 m"))
    found = await cache.lookup(_plan(cache, "how tall is mount everest"))
    assert found.status == "semantic-hit"


async def test_two_replicas_share_one_redis_cache(redis_url: str, embedder: OnnxEmbedder) -> None:
    """What one replica keeps, another serves (exactly and semantically); a purge on one reaches both."""
    prefix = f"t{uuid.uuid4().hex[:12]}"

    async def embed(q: str) -> Any:
        return embedder.embed_queries([q])[0]

    async def vers(collection: str, ids: Any) -> dict[str, str]:
        return {}

    states = [RedisState(redis_url, prefix) for _ in range(2)]
    caches = []
    for st in states:
        await st.open()
        store = RedisCacheStore(st, max_entries=100, dim=lambda: embedder.dim)
        await store.start()
        settings = CacheSettings(semantic={"threshold": 0.9})
        caches.append(ResponseCache(settings, store, embed=embed, versions=vers))
    a, b = caches
    q = "What is the boiling point of water at sea level?"
    await a.store(_plan(a, q), _answer("100 C"))
    assert (await b.lookup(_plan(b, q))).status == "hit"
    deadline = time.monotonic() + 5
    while (found := await b.lookup(_plan(b, q.lower().rstrip("?")))).status != "semantic-hit":
        assert time.monotonic() < deadline, "the vector never reached the other replica"
        await asyncio.sleep(0.05)
    assert found.entry is not None and found.entry.question == q
    # a third replica that starts late loads what is there
    late_state = RedisState(redis_url, prefix)
    await late_state.open()
    late_store = RedisCacheStore(late_state, max_entries=100, dim=lambda: embedder.dim)
    await late_store.start()
    late = ResponseCache(CacheSettings(semantic={"threshold": 0.9}), late_store, embed=embed, versions=vers)
    assert (await late.lookup(_plan(late, q.lower().rstrip("?")))).status == "semantic-hit"
    assert await b.purge(tenant="t") == 1
    assert (await a.lookup(_plan(a, q))).status == "miss"
    for c in (*caches, late):
        await c.close()
    for st in (*states, late_state):
        await st.close()


async def test_an_unreachable_redis_is_a_miss_not_an_error(embedder: OnnxEmbedder) -> None:
    state = RedisState("redis://127.0.0.1:1/0", "x", timeout_s=0.5)
    store = RedisCacheStore(state, max_entries=10, dim=lambda: embedder.dim)

    async def embed(q: str) -> Any:
        return embedder.embed_queries([q])[0]

    async def vers(collection: str, ids: Any) -> dict[str, str]:
        return {}

    cache = ResponseCache(CacheSettings(), store, embed=embed, versions=vers)
    assert (await cache.lookup(_plan(cache, "q?"))).status == "miss"
    assert not await cache.store(_plan(cache, "q?"), _answer("a"))
    await cache.close()


# -- over HTTP -----------------------------------------------------------------------------------------


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not up")


class Svc:
    def __init__(self, base: str, upstream: str) -> None:
        self.base = base
        self.upstream = upstream
        self.keys: dict[str, str] = {}

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, self.base + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60, **kw
        )

    def key(self, tenant: str) -> str:
        if tenant not in self.keys:
            assert self.admin("POST", "/admin/tenants", json={"name": tenant}).status_code in (201, 409)
            r = self.admin("POST", "/admin/keys", json={"tenant": tenant})
            self.keys[tenant] = r.json()["api_key"]
        return self.keys[tenant]

    def client(self, tenant: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key=self.key(tenant), max_retries=0, timeout=120)

    def upstream_requests(self) -> int:
        return int(httpx.get(self.upstream + "/admin/stats").json().get("up", {}).get("requests", 0))

    def put_doc(self, tenant: str, doc_id: str, text: str) -> None:
        headers = {"Authorization": f"Bearer {self.key(tenant)}"}
        httpx.post(self.base + "/v1/collections", json={"name": "kb"}, headers=headers)
        body = {"documents": [{"id": doc_id, "title": doc_id, "text": text}]}
        r = httpx.post(self.base + "/v1/collections/kb/documents", json=body, headers=headers, timeout=60)
        assert r.status_code == 202, r.text
        job = r.json()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            cur = httpx.get(f"{self.base}/v1/jobs/{job['id']}", headers=headers).json()
            if cur["status"] in ("succeeded", "failed"):
                assert cur["status"] == "succeeded", cur
                return
            time.sleep(0.1)
        pytest.fail("upload did not finish")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Svc]:
    tmp = tmp_path_factory.mktemp("cache")
    port = free_port()
    log = (tmp / "fault.log").open("w")
    up = subprocess.Popen(
        [sys.executable, str(HERE / "fault_upstream.py"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    upstream = f"http://127.0.0.1:{port}"
    try:
        _wait(upstream + "/admin/stats", up)
        config = {
            "gateway": {
                "deployments": [
                    {
                        "name": "up",
                        "base_url": upstream + "/up/v1",
                        "model": "up-model",
                        "health_check": False,
                    }
                ],
                "models": {"gw": {"deployments": ["up"]}},
            },
            "answer": {"mode": "extractive"},
            "cache": {"semantic": {"threshold": 0.9}},  # the tests' paraphrases, whatever the default
        }
        (tmp / "ragline.yaml").write_text(yaml.safe_dump(config))
        env = {"RAGLINE_CONFIG": str(tmp / "ragline.yaml"), "RAGLINE_ADMIN_KEY": ADMIN}
        with ragline_process(tmp / "data", env=env) as (_, base):
            s = Svc(base, upstream)
            s.put_doc(
                "alpha",
                "lake",
                "Lake Vostok lies under the Antarctic ice sheet. Its water is 4000 metres below the surface.",
            )
            yield s
    finally:
        up.terminate()
        up.wait(timeout=10)
        log.close()


def _raw(
    svc: Svc, tenant: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    h = {"Authorization": f"Bearer {svc.key(tenant)}", **(headers or {})}
    return httpx.post(svc.base + "/v1/chat/completions", json=body, headers=h, timeout=120)


def test_gateway_answers_at_temperature_zero_are_served_from_the_cache(svc: Svc) -> None:
    body = {"model": "gw", "messages": [{"role": "user", "content": "Name a colour."}], "temperature": 0}
    before = svc.upstream_requests()
    first = _raw(svc, "alpha", body)
    assert first.status_code == 200 and first.headers["x-ragline-cache"] == "miss"
    second = _raw(svc, "alpha", body)
    assert second.headers["x-ragline-cache"] == "hit"
    assert second.json()["ragline"]["cache"] == {"status": "hit"}
    assert second.json()["choices"] == first.json()["choices"] and second.json()["id"] != first.json()["id"]
    assert svc.upstream_requests() == before + 1  # the hit never reached the upstream
    # the SDK streams the hit as a normal stream
    chunks = list(svc.client("alpha").chat.completions.create(stream=True, **body))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.json()["choices"][0]["message"]["content"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert svc.upstream_requests() == before + 1
    # another tenant asks the same: its own miss
    assert _raw(svc, "beta", body).headers["x-ragline-cache"] == "miss"
    assert svc.upstream_requests() == before + 2


def test_sampled_requests_are_not_cached_unless_asked(svc: Svc) -> None:
    body = {"model": "gw", "messages": [{"role": "user", "content": "Write a poem."}]}
    before = svc.upstream_requests()
    for _ in range(2):
        r = _raw(svc, "alpha", body)
        assert r.status_code == 200 and "x-ragline-cache" not in r.headers
    assert svc.upstream_requests() == before + 2
    forced = {**body, "cache": "force"}
    assert _raw(svc, "alpha", forced).headers["x-ragline-cache"] == "miss"
    assert _raw(svc, "alpha", forced).headers["x-ragline-cache"] == "hit"
    assert svc.upstream_requests() == before + 3
    assert "cache" not in json.dumps(httpx.get(svc.upstream + "/admin/stats").json()["up"]["last_body"])


def test_no_cache_and_no_store(svc: Svc) -> None:
    body = {"model": "gw", "messages": [{"role": "user", "content": "Count to three."}], "temperature": 0}
    before = svc.upstream_requests()
    assert _raw(svc, "alpha", body, {"Cache-Control": "no-store"}).status_code == 200
    assert _raw(svc, "alpha", body).headers["x-ragline-cache"] == "miss"  # no-store kept nothing
    assert _raw(svc, "alpha", body, {"Cache-Control": "no-cache"}).headers["x-ragline-cache"] == "miss"
    assert _raw(svc, "alpha", {**body, "cache": "no-cache"}).headers["x-ragline-cache"] == "miss"
    assert _raw(svc, "alpha", body).headers["x-ragline-cache"] == "hit"
    assert svc.upstream_requests() == before + 4


def test_rag_semantic_hit_and_a_changed_fact_is_answered_afresh(svc: Svc) -> None:
    client = svc.client("alpha")
    ask = {"model": "rag/kb", "temperature": 0}
    q = "How deep below the surface is the water of Lake Vostok?"
    first = client.chat.completions.with_raw_response.create(messages=[{"role": "user", "content": q}], **ask)
    assert first.headers["x-ragline-cache"] == "miss"
    assert "4000" in (first.parse().choices[0].message.content or "")
    near = client.chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": "how deep below the surface is the water of lake vostok"}],
        **ask,
    )
    assert near.headers["x-ragline-cache"] == "semantic-hit"
    info = near.parse().model_extra["ragline"]["cache"]  # type: ignore[index]
    assert info["matched_question"] == q and info["similarity"] > 0.9
    # the collection changes under the cache: the answer is built again and carries the new fact
    svc.put_doc(
        "alpha",
        "lake",
        "Lake Vostok lies under the Antarctic ice sheet. Its water is 3700 metres below the surface.",
    )
    again = client.chat.completions.with_raw_response.create(messages=[{"role": "user", "content": q}], **ask)
    assert again.headers["x-ragline-cache"] == "miss"
    text = again.parse().choices[0].message.content or ""
    assert "3700" in text and "4000" not in text
    # a streamed hit replays the answer with its citations in the final chunk
    chunks = list(
        client.chat.completions.create(messages=[{"role": "user", "content": q}], stream=True, **ask)
    )
    final = chunks[-1].model_extra or {}
    assert final["citations"] and final["citations"][0]["doc_id"] == "lake"
    assert final["ragline"]["cache"]["status"] == "hit"
    assert "3700" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_rag_hits_stay_in_their_tenant_and_admin_purges(svc: Svc) -> None:
    q = "Where does Lake Vostok lie?"
    body = {"model": "rag/kb", "messages": [{"role": "user", "content": q}]}
    assert _raw(svc, "alpha", body).headers["x-ragline-cache"] == "miss"
    assert _raw(svc, "alpha", body).headers["x-ragline-cache"] == "hit"
    assert _raw(svc, "beta", body).status_code == 404  # beta has no kb: never alpha's answer
    r = svc.admin("POST", "/admin/cache/purge", json={"tenant": "alpha", "collection": "kb"})
    assert r.status_code == 200 and r.json()["purged"] >= 1
    assert _raw(svc, "alpha", body).headers["x-ragline-cache"] == "miss"
    app_key = svc.key("alpha")
    refused = httpx.post(
        svc.base + "/admin/cache/purge", json={}, headers={"Authorization": f"Bearer {app_key}"}
    )
    assert refused.status_code == 403


def test_cache_metrics(svc: Svc) -> None:
    text = svc.admin("GET", "/metrics").text
    for name in (
        "ragline_cache_requests_total",
        "ragline_cache_entries",
        "ragline_cache_saved_seconds_total",
    ):
        assert name in text
    assert 'ragline_cache_requests_total{result="semantic-hit"}' in text
