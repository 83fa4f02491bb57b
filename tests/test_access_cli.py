"""`ragline tenants|keys|spend` on the embedded store (and once on PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragline.access.keys import key_id_of
from ragline.cli import app
from ragline.config import load_settings
from ragline.store import SpendRecord, build_store
from services import fresh_database

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.startswith("RAGLINE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RAGLINE_DATA_DIR", str(tmp_path / "data"))
    return CliRunner()


def _ok(cli: CliRunner, *args: str) -> str:
    res = cli.invoke(app, list(args))
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res.stdout


def test_tenants_and_keys_round_trip(cli: CliRunner) -> None:
    _ok(cli, "tenants", "create", "acme", "--budget", "25", "--period", "month", "--requests", "60/minute")
    tenants = json.loads(_ok(cli, "tenants", "list", "--json"))
    assert [(t["name"], t["budget"], t["rate_requests"]) for t in tenants] == [
        ("acme", "$25/month", "60/minute"),
        ("default", None, None),  # made on first use, as the server does
    ]
    out = _ok(
        cli, "keys", "create", "--tenant", "acme", "--name", "billing", "-m", "gpt-4o", "-m", "rag/acme-*",
        "--expires", "30d", "--budget", "1.5", "--period", "day", "--json",
    )  # fmt: skip
    created = json.loads(out)
    key = created["api_key"]
    assert key_id_of(key) == created["key_id"] and created["models"] == ["gpt-4o", "rag/acme-*"]
    assert created["budget"] == "$1.5/day" and created["status"] == "active"
    plain = _ok(cli, "keys", "create", "--admin")  # the default tenant; the key on its own line
    admin_key = next(line for line in plain.splitlines() if line.startswith("rl-"))
    listed = json.loads(_ok(cli, "keys", "list", "--json"))
    assert {k["key_id"] for k in listed} == {created["key_id"], key_id_of(admin_key)}
    text = _ok(cli, "keys", "list") + json.dumps(listed)
    assert key not in text and admin_key not in text  # listings never show a key
    assert {k["role"] for k in listed} == {"admin", "app"}
    _ok(cli, "keys", "revoke", key)  # the whole key works as well as its id
    again = cli.invoke(app, ["keys", "revoke", created["key_id"]])
    assert again.exit_code == 1 and "no active key" in again.output
    status = {
        k["key_id"]: k["status"] for k in json.loads(_ok(cli, "keys", "list", "--tenant", "acme", "--json"))
    }
    assert status == {created["key_id"]: "revoked"}


def test_bad_input_is_refused_cleanly_and_stores_nothing(cli: CliRunner) -> None:
    for args in (
        ["tenants", "create", "../etc"],
        ["tenants", "create", "a/b"],
        ["tenants", "create", "acme", "--period", "week", "--budget", "1"],
        ["keys", "create", "--tenant", "ghost"],
        ["keys", "create", "--requests", "60/minuets"],
        ["keys", "create", "-m", "gpt-*"],
        ["keys", "create", "--expires", "someday"],
        ["spend", "--by", "colour"],
    ):
        res = cli.invoke(app, args)
        assert res.exit_code != 0, args
    assert [t["name"] for t in json.loads(_ok(cli, "tenants", "list", "--json"))] == ["default"]
    assert json.loads(_ok(cli, "keys", "list", "--json")) == []


def test_spend_by_period_and_group(cli: CliRunner, tmp_path: Path) -> None:
    now = time.time()
    records = [
        SpendRecord(now - 10, "acme", "k1", "gpt", "d1", 100, 50, 2_500_000_000, False),
        SpendRecord(now - 5, "acme", "k2", "local", "local", 10, 5, 0, True),
        SpendRecord(now - 86400 * 40, "acme", "k1", "gpt", "d1", 1, 1, 7_000_000_000),  # 40 days ago
    ]

    async def seed() -> None:
        store = build_store(load_settings())
        await store.open()
        await store.commit_spend([], records)
        await store.close()

    asyncio.run(seed())
    today = json.loads(_ok(cli, "spend", "--period", "day", "--by", "tenant,model", "--json"))
    assert [(r["tenant"], r["model"], r["requests"], r["cost_usd"], r["cached"]) for r in today["rows"]] == [
        ("acme", "gpt", 1, "2.5", 0),
        ("acme", "local", 1, "0", 1),
    ]
    total = json.loads(_ok(cli, "spend", "--period", "total", "--by", "key", "--json"))
    assert [(r["key"], r["cost_usd"]) for r in total["rows"]] == [("k1", "9.5"), ("k2", "0")]
    one = json.loads(
        _ok(cli, "spend", "--since", "2000-01-01", "--key", "k2", "--by", "deployment", "--json")
    )
    assert [r["deployment"] for r in one["rows"]] == ["local"]
    assert "acme" in _ok(cli, "spend", "--period", "total")  # the table


def test_the_cli_works_on_postgresql(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    monkeypatch.setenv("RAGLINE_STORE__URL", fresh_database(postgres_url))
    _ok(cli, "tenants", "create", "acme")
    created = json.loads(_ok(cli, "keys", "create", "--tenant", "acme", "--json"))
    assert [k["key_id"] for k in json.loads(_ok(cli, "keys", "list", "--json"))] == [created["key_id"]]


def test_errors_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    env["RAGLINE_DATA_DIR"] = str(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "ragline.cli", "tenants", "create", "../../etc/passwd"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "tenant name '../../etc/passwd'" in res.stderr
