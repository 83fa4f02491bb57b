"""Caps that keep one tenant or one key from taking what others need, through a real `ragline serve`.

One server with a bootstrap admin key, small caps (collections per tenant, async jobs per key, the
job queue) and a gateway model whose upstream (tests/fault_upstream.py) holds every answer for a
minute, so the jobs stay unfinished while a test needs them to; each test cancels its jobs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import free_port, ragline_process
from test_access_http import ADMIN, MSG, Svc, _wait_http

HERE = Path(__file__).resolve().parent
PER_TENANT = 2
JOBS_PER_KEY = 2
QUEUED = 2  # with one async job running at a time


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Svc]:
    tmp = tmp_path_factory.mktemp("limits")
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    log = (tmp / "fault.log").open("w")
    up = subprocess.Popen(
        [sys.executable, str(HERE / "fault_upstream.py"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    config = {
        "gateway": {
            "deployments": [
                {"name": "up", "base_url": upstream + "/hold/v1", "model": "up-model", "health_check": False}
            ],
            "models": {"gw": {"deployments": ["up"]}},
        },
        "collections": {"max_per_tenant": PER_TENANT, "max_count": 50},
        "server": {
            "max_running_async_jobs": 1,
            "max_queued_jobs": QUEUED,
            "max_jobs_per_key": JOBS_PER_KEY,
        },
    }
    (tmp / "ragline.yaml").write_text(yaml.safe_dump(config))
    env = {"RAGLINE_CONFIG": str(tmp / "ragline.yaml"), "RAGLINE_ADMIN_KEY": ADMIN}
    try:
        _wait_http(upstream + "/admin/stats", up)
        httpx.post(
            upstream + "/admin/faults", json={"instance": "hold", "faults": [], "default": {"delay": 60}}
        )
        with ragline_process(tmp / "data", env=env) as (_, base):
            s = Svc(base, tmp / "data", upstream)
            for t in ("alpha", "beta", "gamma"):
                s.tenant(t)
            yield s
    finally:
        up.kill()  # its held answers would keep a graceful shutdown waiting for a minute
        up.wait(timeout=10)
        log.close()


def _refused(r: httpx.Response, status: int, code: str, setting: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and setting in err["message"], err
    assert set(err) == {"message", "type", "code", "param"}
    return dict(err)


# -- collections per tenant ---------------------------------------------------------------------


def test_a_tenant_at_its_collection_cap_leaves_room_for_the_others(svc: Svc) -> None:
    a, b = svc.key("alpha"), svc.key("beta")
    for i in range(PER_TENANT):
        r = svc.call("POST", "/v1/collections", a, json={"name": f"c{i}"})
        assert r.status_code == 201, r.text
    over = svc.call("POST", "/v1/collections", a, json={"name": "one-more"})
    err = _refused(over, 403, "limit_exceeded", "collections.max_per_tenant")
    assert f"limit of {PER_TENANT} collections per tenant" in err["message"]
    assert "alpha~" not in err["message"]  # the tenant's own name for it, not the stored one
    # an upload into a new collection is refused the same way, before a job is queued
    up = svc.call(
        "POST", "/v1/collections/one-more/documents", a, json={"documents": [{"id": "d", "text": "x"}]}
    )
    _refused(up, 403, "limit_exceeded", "collections.max_per_tenant")
    # an existing collection is not a new one
    assert svc.call("POST", "/v1/collections", a, json={"name": "c0"}).status_code in (200, 201, 409)
    # tenant beta still creates its own, under the same names too
    for i in range(PER_TENANT):
        r = svc.call("POST", "/v1/collections", b, json={"name": f"c{i}"})
        assert r.status_code == 201, r.text
    _refused(
        svc.call("POST", "/v1/collections", b, json={"name": "c9"}), 403, "limit_exceeded", "max_per_tenant"
    )
    names = [c["id"] for c in svc.call("GET", "/v1/collections", a).json()["data"]]
    assert sorted(names) == [f"c{i}" for i in range(PER_TENANT)]


# -- async jobs per key and in total ------------------------------------------------------------


def _submit(svc: Svc, key: str) -> httpx.Response:
    return svc.call("POST", "/v1/async/chat/completions", key, json={"model": "gw", "messages": MSG})


def _cancel_all(svc: Svc, jobs: list[tuple[str, str]]) -> None:
    for key, job_id in jobs:
        svc.call("POST", f"/v1/jobs/{job_id}/cancel", key)
    deadline = time.monotonic() + 30
    for key, job_id in jobs:
        while svc.call("GET", f"/v1/jobs/{job_id}", key).json()["status"] not in ("cancelled", "failed"):
            assert time.monotonic() < deadline, f"job {job_id} was not cancelled"
            time.sleep(0.05)


def _accepted(svc: Svc, key: str, jobs: list[tuple[str, str]]) -> None:
    r = _submit(svc, key)
    assert r.status_code == 202, r.text
    jobs.append((key, str(r.json()["id"])))


def test_a_key_at_its_job_cap_gets_429_while_another_key_is_accepted(svc: Svc) -> None:
    k1, k2 = svc.key("alpha"), svc.key("alpha")  # two keys of one tenant: the cap is per key
    jobs: list[tuple[str, str]] = []
    try:
        for _ in range(JOBS_PER_KEY):
            _accepted(svc, k1, jobs)
        over = _submit(svc, k1)
        err = _refused(over, 429, "too_many_jobs", "server.max_jobs_per_key")
        assert err["type"] == "rate_limit_error"
        assert int(over.headers["retry-after"]) >= 1
        _accepted(svc, k2, jobs)  # the queue has room, and k2 holds none
        # a cancelled job frees its key's slot
        _cancel_all(svc, jobs[:1])
        _accepted(svc, k1, jobs)
    finally:
        _cancel_all(svc, jobs)


def test_the_total_job_queue_cap_gets_429(svc: Svc) -> None:
    keys = [svc.key(t) for t in ("alpha", "beta", "gamma")]
    jobs: list[tuple[str, str]] = []
    try:
        # one job runs, QUEUED wait: no key is at its own cap
        for i in range(1 + QUEUED):
            _accepted(svc, keys[i % 2], jobs)
        over = _submit(svc, keys[2])
        _refused(over, 429, "job_queue_full", "server.max_queued_jobs")
        assert int(over.headers["retry-after"]) >= 1
    finally:
        _cancel_all(svc, jobs)
    _accepted(svc, keys[2], jobs)  # room again once they are cancelled
    _cancel_all(svc, jobs[-1:])
