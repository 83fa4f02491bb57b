"""Settings: unknown keys refused with the closest valid one, the generated example file, `config show`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from ragline.config import Settings, load_settings
from ragline.config_render import MASK, effective_settings, example_yaml
from ragline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "ragline.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"answer": {"topk": 5}}, "answer.topk: unknown setting; did you mean 'top_k'?"),
        ({"retrieval": {"fuson": "rrf"}}, "retrieval.fuson: unknown setting; did you mean 'fusion'?"),
        ({"chunking": {"chunk_token": 100}}, "did you mean 'chunk_tokens'?"),
        ({"embedder": {"pth": "/m"}}, "embedder.pth: unknown setting; did you mean 'path'?"),
        ({"llm": {"nctx": 2048}}, "llm.nctx: unknown setting; did you mean 'n_ctx'?"),
        ({"ingest": {"max_file_byte": 1}}, "did you mean 'max_file_bytes'?"),
        ({"server": {"prot": 1}}, "server.prot: unknown setting; did you mean 'port'?"),
        ({"rerank": {"kindd": "none"}}, "rerank.kindd: unknown setting; did you mean 'kind'?"),
        ({"datadir": "/tmp/x"}, "datadir: unknown setting; did you mean 'data_dir'?"),
        (
            {"gateway": {"retry": {"max_attempt": 2}}},
            "gateway.retry.max_attempt: unknown setting; did you mean 'max_attempts'?",
        ),
        (
            {"gateway": {"deployments": [{"name": "a", "kind": "local", "wieght": 2}]}},
            "gateway.deployments.0.wieght: unknown setting; did you mean 'weight'?",
        ),
        (
            {
                "gateway": {
                    "deployments": [{"name": "a", "kind": "local"}],
                    "models": {"m": {"deployments": ["a"], "fallback": []}},
                }
            },
            "gateway.models.m.fallback: unknown setting; did you mean 'fallbacks'?",
        ),
    ],
)
def test_unknown_key_in_the_file_is_refused_naming_the_closest_valid_one(
    tmp_path: Path, data: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(_write(tmp_path, data))
    assert expected in str(e.value)


def test_every_unknown_key_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(
            _write(tmp_path, {"answer": {"topk": 5, "mode": "extractive"}, "retrieval": {"topk": 2}})
        )
    msg = str(e.value)
    assert "answer.topk" in msg and "retrieval.topk" in msg


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("RAGLINE_ANSWER__TOPK", "RAGLINE_ANSWER__TOP_K"),
        ("RAGLINE_DATADIR", "RAGLINE_DATA_DIR"),
        ("RAGLINE_ANSWR__TOP_K", "RAGLINE_ANSWER__TOP_K"),
        ("RAGLINE_LLM__MAXTOKENS", "RAGLINE_LLM__MAX_TOKENS"),
        # the variables that are not settings are candidates too
        ("RAGLINE_ADMINKEY", "RAGLINE_ADMIN_KEY"),
        ("RAGLINE_CONFG", "RAGLINE_CONFIG"),
        ("RAGLINE_SHARED_DAT", "RAGLINE_SHARED_DATA"),
        # under a dict-valued field, any key, then the fields of the dict's value model
        (
            "RAGLINE_PRICES__MODELS__GPT4__INPTU_PER_MILLION",
            "RAGLINE_PRICES__MODELS__GPT4__INPUT_PER_MILLION",
        ),
        ("RAGLINE_PRICES__MODEL__GPT4__INPUT_PER_MILLION", "RAGLINE_PRICES__MODELS__GPT4__INPUT_PER_MILLION"),
        ("RAGLINE_GATEWAY__MODELS__GW__MAXTOKENS", "RAGLINE_GATEWAY__MODELS__GW__MAX_TOKENS"),
        ("RAGLINE_ANSWER__TOP_K__X", "RAGLINE_ANSWER__TOP_K"),  # a plain value has no fields
    ],
)
def test_unknown_environment_variable_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, expected: str
) -> None:
    monkeypatch.setenv(name, "5")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert f"environment variable {name}: no such setting; did you mean {expected}?" in str(e.value)


def test_valid_environment_variables_still_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGLINE_ANSWER__TOP_K", "7")
    monkeypatch.setenv("RAGLINE_CONFIG", "")  # not a setting: names the file, and empty means none
    assert load_settings().answer.top_k == 7


def test_environment_variables_may_set_entries_of_dict_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGLINE_PRICES__MODELS__GPT4__INPUT_PER_MILLION", "1")
    monkeypatch.setenv("RAGLINE_PRICES__DEPLOYMENTS__UP", '{"output_per_million": 2}')  # an entry whole
    prices = load_settings().prices
    assert prices.models["gpt4"].input_per_million == 1.0  # pydantic-settings reads the key in lower case
    assert prices.deployments["up"].output_per_million == 2.0


def test_the_committed_example_file_is_what_the_model_generates() -> None:
    committed = (ROOT / "ragline.example.yaml").read_text(encoding="utf-8")
    assert committed == example_yaml(), (
        "ragline.example.yaml is out of date: regenerate it with "
        "`ragline config example -o ragline.example.yaml`"
    )


def test_the_example_file_loads_to_exactly_the_defaults() -> None:
    loaded = load_settings(ROOT / "ragline.example.yaml")
    assert loaded.model_dump() == Settings().model_dump()


def _setting_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    from ragline.config_render import _model_of

    paths = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        inner = _model_of(info.annotation)
        if inner is not None:
            origin = getattr(info.annotation, "__origin__", None)
            sep = "[]." if origin is list else ".*." if origin is dict else "."
            paths.extend(_setting_paths(inner, path + sep))
    return paths


def test_every_setting_appears_in_the_example_and_in_configuration_md() -> None:
    doc = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    example = example_yaml()
    missing_doc = [p for p in _setting_paths(Settings) if f"`{p}`" not in doc]
    assert not missing_doc, f"docs/CONFIGURATION.md does not describe: {', '.join(missing_doc)}"
    for path in _setting_paths(Settings):
        leaf = re.split(r"\.|\[\]\.|\.\*\.", path)[-1]
        assert re.search(rf"^[ #]*{re.escape(leaf)}:", example, re.M), path


def test_effective_settings_mask_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RL_TEST_UPSTREAM_KEY", "sk-live-secret-1")
    cfg = _write(
        tmp_path,
        {
            "answer": {"top_k": 4},
            "rerank": {
                "kind": "remote",
                "url": "http://user:pw-secret-2@rr:8080/rerank?API_KEY=sk-secret-10&top=5",
                "api_key": "sk-secret-3",
            },
            "gateway": {
                "deployments": [
                    {
                        "name": "a",
                        "base_url": "http://u:pw-secret-4@10.0.0.5:8000/v1",
                        "model": "m",
                        "api_key_env": "RL_TEST_UPSTREAM_KEY",
                    },
                    {
                        "name": "b",
                        "base_url": "http://10.0.0.6:8000/v1",
                        "model": "m",
                        "api_key": "sk-secret-5",
                    },
                ],
                "models": {"m": {"deployments": ["a", "b"]}},
            },
            "store": {"url": "postgresql://rl:pw-secret-6@db:5432/rl?sslmode=require&password=pw-secret-7"},
            "state": {"url": "redis://:pw-secret-8@cache:6379/0?password=pw-secret-9"},
        },
    )
    shown = effective_settings(load_settings(cfg))
    text = json.dumps(shown)
    for secret in ("sk-live-secret-1", "pw-secret-2", "sk-secret-3", "pw-secret-4", "sk-secret-5"):
        assert secret not in text
    for secret in ("pw-secret-6", "pw-secret-7", "pw-secret-8", "pw-secret-9", "sk-secret-10"):
        assert secret not in text
    assert shown["rerank"]["url"] == f"http://{MASK}@rr:8080/rerank?API_KEY={MASK}&top=5"
    assert shown["store"]["url"] == f"postgresql://{MASK}@db:5432/rl?sslmode=require&password={MASK}"
    assert shown["state"]["url"] == f"redis://{MASK}@cache:6379/0?password={MASK}"
    assert shown["answer"]["top_k"] == 4
    assert shown["rerank"]["api_key"] == MASK
    assert shown["gateway"]["deployments"][0]["base_url"] == f"http://{MASK}@10.0.0.5:8000/v1"
    assert shown["gateway"]["deployments"][0]["api_key_env"] == "RL_TEST_UPSTREAM_KEY"  # a name, not a secret
    assert shown["gateway"]["deployments"][1]["api_key"] == MASK


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://db/rl?password=pw-secret", f"postgresql://db/rl?password={MASK}"),
        ("postgresql://db/rl?user=rl&passwd=pw-secret", f"postgresql://db/rl?user=rl&passwd={MASK}"),
        ("redis://cache:6379/0?Token=pw-secret&db=1", f"redis://cache:6379/0?Token={MASK}&db=1"),
        ("http://rr/rerank?api-key=pw-secret", f"http://rr/rerank?api-key={MASK}"),
        (
            "http://rr/rerank?access_token=pw-secret&key=pw-secret",
            f"http://rr/rerank?access_token={MASK}&key={MASK}",
        ),
        ("host=db dbname=rl password=pw-secret", f"host=db dbname=rl password={MASK}"),
        ("host=db password = 'pw secret' user=rl", f"host=db password = {MASK} user=rl"),
        ("postgresql://db/rl?sslmode=require", "postgresql://db/rl?sslmode=require"),  # nothing secret
    ],
)
def test_effective_settings_mask_secrets_in_query_strings_and_dsns(url: str, shown: str) -> None:
    settings = load_settings(store={"url": url}, rerank={"url": url})
    masked = effective_settings(settings)
    assert masked["store"]["url"] == shown and masked["rerank"]["url"] == shown
    assert "pw-secret" not in json.dumps(masked) and "pw secret" not in json.dumps(masked)


@pytest.mark.parametrize("section", ["store", "state", "rerank"])
def test_a_url_with_a_bad_port_is_refused_naming_the_setting(section: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(**{section: {"url": "postgresql://rl:pw-secret@db:54x2/rl"}})
    assert f"{section}.url: " in str(e.value) and "port" in str(e.value)
    assert "pw-secret" not in str(e.value)


def _ragline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    return subprocess.run(
        [sys.executable, "-m", "ragline.cli", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_show_prints_file_environment_and_defaults(tmp_path: Path) -> None:
    cfg = _write(tmp_path, {"answer": {"top_k": 4}, "rerank": {"api_key": "sk-cli-secret"}})
    res = _ragline("config", "show", "--config", str(cfg), "--json", env={"RAGLINE_RETRIEVAL__TOP_K": "9"})
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert shown["answer"]["top_k"] == 4  # file
    assert shown["retrieval"]["top_k"] == 9  # environment
    assert shown["chunking"]["chunk_tokens"] == 128  # default
    assert "sk-cli-secret" not in res.stdout
    res = _ragline("config", "show", "--config", str(cfg))
    assert res.returncode == 0 and yaml.safe_load(res.stdout)["answer"]["top_k"] == 4


def test_cli_refuses_a_misspelt_key_in_one_clear_message(tmp_path: Path) -> None:
    cfg = _write(tmp_path, {"answer": {"topk": 5}})
    res = _ragline("config", "show", "--config", str(cfg))
    assert res.returncode == 1
    assert "answer.topk: unknown setting; did you mean 'top_k'?" in res.stderr
    assert "Traceback" not in res.stderr


def test_config_example_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "example.yaml"
    res = _ragline("config", "example", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert out.read_text(encoding="utf-8") == example_yaml()
