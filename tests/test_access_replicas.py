"""Two `ragline serve` replicas sharing a real PostgreSQL (records) and a real Redis (counters):
limits, budgets and revocations hold across them exactly as on one.

The servers (Debian's postgresql and redis-server) are started by the suite on loopback
(tests/services.py); each replica has its own data directory, as replicas on two hosts would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
import yaml

from conftest import ragline_process
from services import fresh_database
from test_access_http import ADMIN, MSG, gateway_config, upstream  # noqa: F401  (a module fixture)


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: str,  # noqa: F811  (the fixture imported above)
    postgres_url: str,
    redis_url: str,
) -> Iterator[list[str]]:
    tmp = tmp_path_factory.mktemp("replicas")
    (tmp / "ragline.yaml").write_text(yaml.safe_dump(gateway_config(upstream)))
    httpx.post(upstream + "/admin/faults", json={"instance": "slow", "faults": [], "default": {"delay": 0.3}})
    env = {
        "RAGLINE_CONFIG": str(tmp / "ragline.yaml"),
        "RAGLINE_ADMIN_KEY": ADMIN,
        "RAGLINE_STORE__URL": fresh_database(postgres_url),
        "RAGLINE_STATE__URL": redis_url,
        "RAGLINE_STATE__KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}",
    }
    with ExitStack() as stack:
        bases = [stack.enter_context(ragline_process(tmp / f"r{i}", env=env))[1] for i in range(2)]
        yield bases


def _admin(base: str, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(method, base + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30, **kw)  # type: ignore[arg-type]


def _key(base: str, tenant: str, **kw: object) -> str:
    r = _admin(base, "POST", "/admin/tenants", json={"name": tenant})
    assert r.status_code in (201, 409), r.text
    r = _admin(base, "POST", "/admin/keys", json={"tenant": tenant, **kw})
    assert r.status_code == 201, r.text
    return str(r.json()["api_key"])


async def _spread(
    bases: list[str], key: str, n: int, method: str, path: str, body: object = None
) -> list[int]:
    """``n`` concurrent requests, alternating between the replicas; their status codes."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        headers=headers, timeout=60, limits=httpx.Limits(max_connections=n)
    ) as client:
        rs = await asyncio.gather(
            *(client.request(method, bases[i % len(bases)] + path, json=body) for i in range(n))
        )
    return [r.status_code for r in rs]


def test_a_requests_limit_admits_exactly_60_of_200_across_replicas(replicas: list[str]) -> None:
    key = _key(replicas[0], "limited", rate_requests="60/minute")
    for base in replicas:  # both know the key (and a first request warms each one's cache)
        assert httpx.get(base + "/health/ready").status_code == 200
    codes = asyncio.run(_spread(replicas, key, 200, "GET", "/v1/models"))
    assert codes.count(200) == 60 and codes.count(429) == 140, sorted(set(codes))


def test_model_requests_are_limited_exactly_across_replicas(replicas: list[str]) -> None:
    """A model route counts its request in the same Redis round trip as its tokens and budget."""
    key = _key(replicas[0], "limited2", rate_requests="30/minute", rate_tokens="1000000/minute")
    body = {"model": "gw", "messages": MSG, "max_tokens": 3}
    codes = asyncio.run(_spread(replicas, key, 100, "POST", "/v1/chat/completions", body))
    assert codes.count(200) == 30 and codes.count(429) == 70, sorted(set(codes))


def test_a_budget_holds_exactly_across_replicas(replicas: list[str]) -> None:
    key = _key(replicas[1], "budget2", budget_usd="0.03", period="total")  # 10 requests' worth
    body = {"model": "gw", "messages": MSG, "max_tokens": 3}
    codes = asyncio.run(_spread(replicas, key, 100, "POST", "/v1/chat/completions", body))
    assert codes.count(200) == 10 and codes.count(429) == 90, codes
    key_id = key[3:15]
    deadline = time.monotonic() + 10
    while True:
        rows = _admin(
            replicas[0],
            "GET",
            "/admin/spend",
            params={"group_by": "key", "key_id": key_id, "period": "total"},
        ).json()["data"]
        if rows and rows[0]["requests"] == 10:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)
    assert rows[0]["cost_usd"] == "0.03"


def test_a_revoked_key_is_refused_by_every_replica_within_a_second(replicas: list[str]) -> None:
    key = _key(replicas[0], "revoked")
    headers = {"Authorization": f"Bearer {key}"}
    for base in replicas:
        assert httpx.get(base + "/v1/models", headers=headers).status_code == 200  # cached on both
    t = time.monotonic()
    assert _admin(replicas[1], "DELETE", f"/admin/keys/{key[3:15]}").status_code == 200
    pending = set(replicas)
    while pending:
        for base in list(pending):
            if httpx.get(base + "/v1/models", headers=headers).status_code == 401:
                pending.discard(base)
        assert time.monotonic() - t < 1.0, f"still accepted by {pending} after 1 s"
    took = time.monotonic() - t
    print(f"revocation effective on both replicas after {took * 1000:.0f} ms")


def test_records_made_through_one_replica_are_seen_by_the_other(replicas: list[str]) -> None:
    _key(replicas[0], "where")
    listed = {t["name"] for t in _admin(replicas[1], "GET", "/admin/tenants").json()["data"]}
    assert "where" in listed  # made through one replica, seen through the other
