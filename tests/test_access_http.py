"""Keys, tenants, limits and budgets through a real `ragline serve` on loopback (SQLite store).

One server with a bootstrap admin key and a gateway model served by the fault-injecting upstream
(tests/fault_upstream.py, a separate process): every route needs a key, a tenant sees only its
own collections, documents and jobs through every route (the OpenAPI route table is walked, so a
new route without an isolation check fails here), limits answer 429 with OpenAI's headers, and
a budget holds exactly under 100 concurrent requests.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from conftest import RAGLINE, free_port, ragline_process

HERE = Path(__file__).resolve().parent
ADMIN = "admin-" + "k" * 40
MSG = [{"role": "user", "content": "Say hi."}]
PRICE_OUT = 1000.0  # USD per million completion tokens: a fault-upstream answer (3 tokens) costs $0.003


class Svc:
    def __init__(self, base: str, data_dir: Path, upstream: str) -> None:
        self.base = base
        self.data_dir = data_dir
        self.upstream = upstream

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, self.base + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30, **kw
        )

    def key(self, tenant: str, **kw: Any) -> str:
        r = self.admin("POST", "/admin/keys", json={"tenant": tenant, **kw})
        assert r.status_code == 201, r.text
        return str(r.json()["api_key"])

    def tenant(self, name: str, **kw: Any) -> None:
        r = self.admin("POST", "/admin/tenants", json={"name": name, **kw})
        assert r.status_code in (201, 409), r.text

    def call(self, method: str, path: str, key: str | None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.request(method, self.base + path, headers=headers, timeout=60, **kw)


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url} exited"
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not up in {timeout} s")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("up") / "fault.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fault_upstream.py"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base + "/admin/stats", proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def gateway_config(upstream: str) -> dict[str, Any]:
    return {
        "gateway": {
            "deployments": [
                {"name": "up", "base_url": upstream + "/slow/v1", "model": "up-model", "health_check": False}
            ],
            "models": {"gw": {"deployments": ["up"]}},
        },
        "prices": {"models": {"gw": {"input_per_million": 0.0, "output_per_million": PRICE_OUT}}},
    }


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Svc]:
    tmp = tmp_path_factory.mktemp("access")
    (tmp / "ragline.yaml").write_text(yaml.safe_dump(gateway_config(upstream)))
    # every call to the slow instance takes 0.3 s: concurrent requests overlap for the budget test
    httpx.post(upstream + "/admin/faults", json={"instance": "slow", "faults": [], "default": {"delay": 0.3}})
    env = {"RAGLINE_CONFIG": str(tmp / "ragline.yaml"), "RAGLINE_ADMIN_KEY": ADMIN}
    with ragline_process(tmp / "data", env=env) as (_, base):
        s = Svc(base, tmp / "data", upstream)
        s.tenant("alpha")
        s.tenant("beta")
        yield s


# -- authentication -----------------------------------------------------------------------------


def _routes(svc: Svc) -> list[tuple[str, str]]:
    spec = httpx.get(svc.base + "/openapi.json").json()
    return [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]


def _fill(path: str) -> str:
    return (
        path.replace("{name}", "x")
        .replace("{doc_id}", "d")
        .replace("{job_id}", "job-x")
        .replace("{key_id}", "k")
        .replace("{run_id}", "run_x")
    )


def test_every_route_but_health_needs_a_key(svc: Svc) -> None:
    routes = _routes(svc)
    assert len(routes) > 15
    for i, (method, path) in enumerate(routes):
        url = _fill(path)
        if path.startswith("/health/"):
            assert svc.call(method, url, None).status_code == 200
            continue
        for key in (None, "garbage", "rl-aaaaaaaaaaaa_" + "b" * 43):  # each route from its own address:
            ip = f"198.51.100.{i + 1}"  # failed authentications are limited per IP
            r = svc.call(method, url, key, headers={"X-Forwarded-For": ip})
            assert r.status_code == 401, (method, path, key, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
    # /metrics (outside the schema): an admin key by default
    assert svc.call("GET", "/metrics", None).status_code == 401
    assert svc.call("GET", "/metrics", ADMIN).status_code == 200


def test_openai_client_with_a_bad_and_a_good_key(svc: Svc) -> None:
    with pytest.raises(openai.AuthenticationError) as exc:
        openai.OpenAI(base_url=svc.base + "/v1", api_key="sk-nope", max_retries=0).models.list()
    assert exc.value.code == "invalid_api_key"
    key = svc.key("alpha")
    ids = {m.id for m in openai.OpenAI(base_url=svc.base + "/v1", api_key=key, max_retries=0).models.list()}
    assert {"local", "gw"} <= ids
    r = svc.call("GET", "/v1/models", None, headers={"x-api-key": key})  # the other header
    assert r.status_code == 200


def test_a_key_is_shown_once_and_stored_only_as_a_hash(svc: Svc) -> None:
    r = svc.admin("POST", "/admin/keys", json={"tenant": "alpha", "name": "billing"})
    created = r.json()
    key = created["api_key"]
    assert key.startswith("rl-") and len(key) > 50
    listed = svc.admin("GET", "/admin/keys", params={"tenant": "alpha"}).json()["data"]
    mine = [k for k in listed if k["key_id"] == created["key_id"]]
    assert mine and "api_key" not in mine[0] and key not in str(listed)
    secret = key.split("_", 1)[1]
    for f in svc.data_dir.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    assert svc.call("GET", "/v1/models", key).status_code == 200


def test_application_keys_cannot_use_the_admin_api(svc: Svc) -> None:
    key = svc.key("alpha")
    for method, path in [("GET", "/admin/tenants"), ("GET", "/admin/keys"), ("GET", "/admin/spend")]:
        r = svc.call(method, path, key)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["type"] == "permission_error"
    assert svc.call("GET", "/metrics", key).status_code == 403
    r = svc.call("POST", "/admin/keys", key, json={"tenant": "alpha", "role": "admin"})
    assert r.status_code == 403


def test_revocation_takes_effect_within_a_second(svc: Svc) -> None:
    key = svc.key("alpha")
    assert svc.call("GET", "/v1/models", key).status_code == 200
    key_id = key[3:15]
    t = time.monotonic()
    assert svc.admin("DELETE", f"/admin/keys/{key_id}").status_code == 200
    while svc.call("GET", "/v1/models", key).status_code == 200:
        assert time.monotonic() - t < 1.0, "a revoked key still works after 1 s"
        time.sleep(0.02)
    r = svc.call("GET", "/v1/models", key)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert svc.admin("DELETE", f"/admin/keys/{key_id}").status_code == 404  # already revoked


def test_an_expired_key_is_refused(svc: Svc) -> None:
    key = svc.key("alpha", expires_in_s=1)
    assert svc.call("GET", "/v1/models", key).status_code == 200
    time.sleep(1.2)
    r = svc.call("GET", "/v1/models", key)
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "header",
    [
        b"Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        b"Bearer",
        b"Token abc",
        b"Bearer \xff\xfe\xfd",
        "Bearer clé-ünïcødé".encode(),
        b"Bearer " + b"A" * 10_000,
        b"Bearer rl-'; DROP TABLE keys; --",
        b"Bearer rl-aaaaaaaaaaaa_$(touch /tmp/pwned)`id`aaaaaaaaaaaaaaaaaaaaaaaaa",
        b"Bearer ' OR '1'='1",
    ],
)
def test_malformed_authorization_is_a_clean_401(svc: Svc, header: bytes) -> None:
    before = svc.admin("GET", "/admin/keys").json()["data"]
    ip = f"198.51.101.{len(header) % 250}".encode()
    r = httpx.get(svc.base + "/v1/models", headers=[(b"Authorization", header), (b"X-Forwarded-For", ip)])
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert svc.admin("GET", "/admin/keys").json()["data"] == before
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("name", ["../etc", "a/b", "a\\b", "A B", "", ".hidden", "x" * 80, "tenant~x", "é"])
def test_bad_tenant_names_are_refused_and_nothing_is_stored(svc: Svc, name: str) -> None:
    before = svc.admin("GET", "/admin/tenants").json()["data"]
    r = svc.admin("POST", "/admin/tenants", json={"name": name})
    assert r.status_code == 400, r.text
    assert svc.admin("GET", "/admin/tenants").json()["data"] == before
    r = svc.admin("POST", "/admin/keys", json={"tenant": name})
    assert r.status_code in (400, 404), r.text
    assert not list((svc.data_dir / "collections").glob("*..*"))


def test_failed_authentication_is_rate_limited_per_ip(svc: Svc) -> None:
    good = svc.key("alpha")
    attacker = {"X-Forwarded-For": "203.0.113.66"}  # uvicorn trusts the header from loopback
    codes = [
        svc.call("GET", "/v1/models", f"rl-{i:012d}_" + "x" * 43, headers=attacker).status_code
        for i in range(25)
    ]
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}, codes  # auth.failed_per_ip: 20/minute
    r = svc.call("GET", "/v1/models", good, headers=attacker)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # blocked, even with a valid key
    assert svc.call("GET", "/v1/models", good, headers={"X-Forwarded-For": "203.0.113.67"}).status_code == 200


# -- tenants ------------------------------------------------------------------------------------


def _wait_job(svc: Svc, key: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = svc.call("GET", f"/v1/jobs/{job_id}", key).json()
        if job["status"] in ("succeeded", "failed"):
            assert job["status"] == "succeeded", job
            return dict(job)
        time.sleep(0.1)
    pytest.fail("job did not finish")


def _upload(svc: Svc, key: str, collection: str, doc_id: str, text: str) -> str:
    r = svc.call(
        "POST",
        f"/v1/collections/{collection}/documents",
        key,
        json={"documents": [{"id": doc_id, "text": text}]},
    )
    assert r.status_code == 202, r.text
    job_id = str(r.json()["id"])
    _wait_job(svc, key, job_id)
    return job_id


@pytest.fixture(scope="module")
def tenants(svc: Svc) -> dict[str, Any]:
    a, b = svc.key("alpha"), svc.key("beta")
    secret = "The vault combination of the alpha tenant is 4471 zebra orchid."
    job_a = _upload(svc, a, "alpha-only", "vault", secret)
    _upload(svc, a, "alpha-secret", "vault", secret)
    _upload(svc, a, "shared-name", "vault", secret)
    _upload(svc, b, "shared-name", "tea", "Green tea is brewed at 80 degrees for two minutes.")
    ask = {
        "model": "rag/alpha-only",
        "messages": [{"role": "user", "content": "What is the vault combination?"}],
    }
    r = svc.call(
        "POST", "/v1/chat/completions", a, json={**ask, "rag": {"mode": "agentic"}, "max_tokens": 16}
    )
    assert r.status_code == 200, r.text
    return {"a": a, "b": b, "job_a": job_a, "run_a": r.json()["ragline"]["run"]["id"]}


# What a key of tenant beta gets for each route when it names tenant alpha's collection
# "alpha-only", document "vault" and job (routes that create or write: beta's own, new one).
ISOLATION: dict[tuple[str, str], int] = {
    ("DELETE", "/v1/collections/{name}"): 404,
    ("GET", "/v1/collections/{name}/documents"): 404,
    ("DELETE", "/v1/collections/{name}/documents/{doc_id}"): 404,
    ("POST", "/v1/collections/{name}/search"): 404,
    ("POST", "/v1/collections/{name}/documents"): 202,  # creates beta's own "alpha-only"
    ("POST", "/v1/collections/{name}/files"): 202,  # the same
    ("GET", "/v1/jobs/{job_id}"): 404,
    ("POST", "/v1/jobs/{job_id}/cancel"): 404,
    ("GET", "/v1/rag/runs/{run_id}"): 404,
    ("POST", "/v1/rag/runs/{run_id}/approve"): 404,
    ("POST", "/v1/rag/runs/{run_id}/submit_tool_outputs"): 404,
    ("PATCH", "/admin/tenants/{name}"): 403,  # admin routes: no application key at all
    ("DELETE", "/admin/keys/{key_id}"): 403,
}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/collections/{name}/search"): {"json": {"query": "vault combination"}},
    ("POST", "/v1/collections/{name}/documents"): {
        "json": {"documents": [{"id": "b1", "text": "beta text"}]}
    },
    ("POST", "/v1/collections/{name}/files"): {"files": {"file": ("b.txt", b"beta file text")}},
    ("PATCH", "/admin/tenants/{name}"): {"json": {"disabled": True}},
    ("POST", "/v1/rag/runs/{run_id}/approve"): {"json": {"tool_call_id": "call_x", "approve": True}},
    ("POST", "/v1/rag/runs/{run_id}/submit_tool_outputs"): {
        "json": {"tool_outputs": [{"tool_call_id": "call_x", "output": "o"}]}
    },
}


def test_isolation_on_every_route_that_names_a_resource(svc: Svc, tenants: dict[str, Any]) -> None:
    parametrized = [(m, p) for m, p in _routes(svc) if "{" in p]
    missing = [r for r in parametrized if r not in ISOLATION]
    assert not missing, f"routes without a tenant-isolation check (add them to ISOLATION): {missing}"
    b = tenants["b"]
    for (method, path), expected in ISOLATION.items():
        url = (
            path.replace("{name}", "alpha-only" if path.startswith("/v1") else "alpha")
            .replace("{doc_id}", "vault")
            .replace("{job_id}", tenants["job_a"])
            .replace("{key_id}", tenants["a"][3:15])
            .replace("{run_id}", tenants["run_a"])
        )
        r = svc.call(method, url, b, **BODIES.get((method, path), {}))
        assert r.status_code == expected, (method, path, r.text)
        if expected == 404:
            assert "zebra" not in r.text and "4471" not in r.text
        if expected == 202:
            job = _wait_job(svc, b, r.json()["id"])
            assert job["status"] == "succeeded"
    # alpha's data is untouched, and beta's writes went to beta's own collection
    a = tenants["a"]
    docs_a = svc.call("GET", "/v1/collections/alpha-only/documents", a).json()["data"]
    assert [d["doc_id"] for d in docs_a] == ["vault"]
    docs_b = {d["doc_id"] for d in svc.call("GET", "/v1/collections/alpha-only/documents", b).json()["data"]}
    assert "vault" not in docs_b and docs_b
    assert svc.call("GET", f"/v1/jobs/{tenants['job_a']}", a).status_code == 200
    assert svc.call("GET", f"/v1/rag/runs/{tenants['run_a']}", a).status_code == 200


def test_a_tenant_never_sees_another_tenants_documents(svc: Svc, tenants: dict[str, Any]) -> None:
    a, b = tenants["a"], tenants["b"]
    names_b = {c["id"] for c in svc.call("GET", "/v1/collections", b).json()["data"]}
    names_a = {c["id"] for c in svc.call("GET", "/v1/collections", a).json()["data"]}
    assert "shared-name" in names_a and "shared-name" in names_b and "alpha-only" in names_a
    assert not any("~" in n for n in names_a | names_b)
    hits = svc.call(
        "POST",
        "/v1/collections/shared-name/search",
        b,
        json={"query": "vault combination zebra", "top_k": 10},
    )
    assert hits.status_code == 200
    assert all("zebra" not in h["text"] for h in hits.json()["data"])
    models_b = {m["id"] for m in svc.call("GET", "/v1/models", b).json()["data"]}
    assert {m for m in models_b if m.startswith("rag/")} == {"rag/" + n for n in names_b}
    assert "alpha-secret" in names_a and "alpha-secret" not in names_b
    client_b = openai.OpenAI(base_url=svc.base + "/v1", api_key=b, max_retries=0, timeout=120)
    answer = client_b.chat.completions.create(
        model="rag/shared-name",
        messages=[{"role": "user", "content": "What is the vault combination?"}],
        max_tokens=24,
    )
    body = answer.model_dump()
    assert "4471" not in str(body) and "zebra" not in str(body)
    assert all(c.get("doc_id") != "vault" for c in body.get("citations") or [])
    with pytest.raises(openai.NotFoundError):  # alpha's collection, as a model
        client_b.chat.completions.create(model="rag/alpha-secret", messages=MSG, max_tokens=8)
    with pytest.raises(openai.NotFoundError):  # and through extra_body.rag
        client_b.chat.completions.create(
            model="local", messages=MSG, max_tokens=8, extra_body={"rag": {"collection": "alpha-secret"}}
        )
    r = svc.call(
        "POST",
        "/v1/chat/completions",
        b,
        json={
            "model": "local",
            "messages": [{"role": "user", "content": "What is the vault combination?"}],
            "max_tokens": 24,
            "rag": {"collection": "shared-name"},
        },
    )
    assert r.status_code == 200 and "4471" not in r.text and "zebra" not in r.text


def test_the_default_tenant_is_the_embedded_layout(svc: Svc) -> None:
    key = svc.key("default")
    r = svc.call("POST", "/v1/collections", key, json={"name": "plain"})
    assert r.status_code == 201
    assert (svc.data_dir / "collections" / "plain").is_dir()  # what `ragline ingest -c plain` would use
    assert any(p.name.startswith("alpha~") for p in (svc.data_dir / "collections").iterdir())
    r = svc.call("POST", "/v1/collections", key, json={"name": "alpha~alpha-only"})
    assert r.status_code == 400  # no name reaches another tenant's collection


# -- models, limits, budgets ----------------------------------------------------------------------


def test_a_keys_model_allow_list(svc: Svc) -> None:
    key = svc.key("alpha", models=["gw"])
    client = openai.OpenAI(base_url=svc.base + "/v1", api_key=key, max_retries=0, timeout=30)
    assert client.chat.completions.create(model="gw", messages=MSG, max_tokens=3).choices
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="local", messages=MSG, max_tokens=3)
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model="all-MiniLM-L6-v2", input="x")
    assert {m.id for m in client.models.list()} == {"gw"}


def test_requests_limit_429_with_openai_headers(svc: Svc) -> None:
    key = svc.key("alpha", rate_requests="5/minute")
    seen = []
    for _ in range(5):
        r = svc.call("GET", "/v1/models", key)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "5"
        seen.append(int(r.headers["x-ratelimit-remaining-requests"]))
        assert r.headers["x-ratelimit-reset-requests"]
    assert seen == [4, 3, 2, 1, 0]
    r = svc.call("GET", "/v1/models", key)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=svc.base + "/v1", api_key=key, max_retries=0).models.list()


def test_model_routes_count_requests_with_their_tokens_and_also_when_they_fail_early(svc: Svc) -> None:
    """A model route counts its request with its tokens and budget (one round trip); one that ends
    before that (a 400, a refused model) still counts, and the headers say so."""
    key = svc.key("alpha", rate_requests="4/minute", rate_tokens="100000/minute")
    seen = []
    for body in ({"model": "gw"}, {"model": "gw", "messages": MSG, "max_tokens": 3}, {"messages": 7}):
        r = svc.call("POST", "/v1/chat/completions", key, json=body)
        assert r.status_code in (200, 400), r.text
        seen.append(int(r.headers["x-ratelimit-remaining-requests"]))
    assert seen == [3, 2, 1]
    assert r.status_code == 400 and "x-ratelimit-remaining-tokens" not in r.headers
    r = svc.call("POST", "/v1/embeddings", key, json={"model": "gw-none", "input": "x"})
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    r = svc.call("POST", "/v1/chat/completions", key, json={"model": "gw", "messages": MSG, "max_tokens": 3})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(r.headers["retry-after"]) >= 1


def test_tokens_limit_counts_prompt_tokens_before_the_call(svc: Svc) -> None:
    key = svc.key("alpha", rate_tokens="100/minute")
    client = openai.OpenAI(base_url=svc.base + "/v1", api_key=key, max_retries=0, timeout=30)
    long = [{"role": "user", "content": "word " * 60}]  # about 79 tokens by the estimate
    raw = client.chat.completions.with_raw_response.create(model="gw", messages=long, max_tokens=3)
    assert raw.headers["x-ratelimit-limit-tokens"] == "100"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 30
    calls = httpx.get(svc.upstream + "/admin/stats").json()["slow"]["requests"]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gw", messages=long, max_tokens=3)
    assert httpx.get(svc.upstream + "/admin/stats").json()["slow"]["requests"] == calls  # no upstream call


async def _concurrent_chat(svc: Svc, key: str, n: int) -> list[httpx.Response]:
    body = {"model": "gw", "messages": MSG, "max_tokens": 3}
    async with httpx.AsyncClient(
        base_url=svc.base,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=httpx.Limits(max_connections=n),
    ) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(n)))


def test_a_budget_holds_exactly_under_100_concurrent_requests(svc: Svc) -> None:
    svc.tenant("budgeted")
    # $0.03 total; each request can cost 3 completion tokens at $1000/M = $0.003: exactly 10 fit
    key = svc.key("budgeted", budget_usd="0.03", period="total")
    calls = httpx.get(svc.upstream + "/admin/stats").json().get("slow", {}).get("requests", 0)
    responses = asyncio.run(_concurrent_chat(svc, key, 100))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10 and codes.count(429) == 90, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert httpx.get(svc.upstream + "/admin/stats").json()["slow"]["requests"] - calls == 10
    key_id = key[3:15]
    deadline = time.monotonic() + 10
    while True:
        rows = svc.admin(
            "GET", "/admin/spend", params={"group_by": "key,model", "key_id": key_id, "period": "total"}
        ).json()["data"]
        if rows and rows[0]["requests"] == 10:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)
    assert rows == [
        {
            "key": key_id,
            "model": "gw",
            "requests": 10,
            "prompt_tokens": 50,
            "completion_tokens": 30,
            "cost_usd": "0.03",
            "cached": 0,
        }
    ]
    # spent to the cent: the next request is refused before any upstream call
    r = svc.call("POST", "/v1/chat/completions", key, json={"model": "gw", "messages": MSG, "max_tokens": 1})
    assert r.status_code == 429


def test_a_budgeted_request_without_max_tokens_is_capped(svc: Svc) -> None:
    svc.tenant("capped")
    key = svc.key("capped", budget_usd="100", period="day")
    r = svc.call("POST", "/v1/chat/completions", key, json={"model": "gw", "messages": MSG})
    assert r.status_code == 200, r.text
    sent = httpx.get(svc.upstream + "/admin/stats").json()["slow"]["last_body"]
    assert sent["max_tokens"] == 4096  # spend.assumed_max_tokens: it cannot cost more than reserved


def test_a_budget_reserves_every_choice_of_a_request(svc: Svc) -> None:
    svc.tenant("choices")
    # $0.006: 6 completion tokens at $1000/M; n=3 choices of up to 3 tokens could cost 9
    key = svc.key("choices", budget_usd="0.006", period="total")
    body = {"model": "gw", "messages": MSG, "max_tokens": 3}
    r = svc.call("POST", "/v1/chat/completions", key, json={**body, "n": 3})
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
    r = svc.call("POST", "/v1/chat/completions", key, json={**body, "n": 2})
    assert r.status_code == 200, r.text
    assert httpx.get(svc.upstream + "/admin/stats").json()["slow"]["last_body"]["n"] == 2


# -- open mode and exposure -------------------------------------------------------------------------


def test_an_open_server_refuses_a_public_address_unless_insecure(tmp_path: Path) -> None:
    env = {**os.environ, "RAGLINE_DATA_DIR": str(tmp_path / "data")}
    env.pop("RAGLINE_ADMIN_KEY", None)
    port = free_port()
    r = subprocess.run(
        [RAGLINE, "serve", "--host", "0.0.0.0", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "refusing to serve on 0.0.0.0 with no API keys" in r.stderr and "--insecure" in r.stderr
    with (tmp_path / "log").open("w") as log:
        proc = subprocess.Popen(
            [RAGLINE, "serve", "--host", "0.0.0.0", "--port", str(port), "--insecure"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_http(f"http://127.0.0.1:{port}/health/live", proc, 60)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert "--insecure" in (tmp_path / "log").read_text()


def test_an_open_server_requires_keys_once_one_is_created(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAGLINE_ADMIN_KEY"}
    env["RAGLINE_DATA_DIR"] = str(tmp_path / "data")
    with ragline_process(tmp_path / "data") as (_, base):
        assert httpx.get(base + "/v1/models", headers={"Authorization": "Bearer anything"}).status_code == 200
        assert httpx.get(base + "/admin/tenants").status_code == 403  # no admin API without an admin key
        out = subprocess.run(
            [RAGLINE, "keys", "create", "--name", "first"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        key = next(t for t in out.stdout.split() if t.startswith("rl-"))
        t = time.monotonic()
        while httpx.get(base + "/v1/models").status_code == 200:
            assert time.monotonic() - t < 2.0
            time.sleep(0.05)
        assert httpx.get(base + "/v1/models").status_code == 401
        assert httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
