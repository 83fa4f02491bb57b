"""Real servers from Debian for the tests: installed with apt-get when missing, run on loopback."""

from __future__ import annotations

import functools
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@functools.cache
def _apt_updated() -> None:
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)


def _find(binary: str, extra_dirs: str) -> str | None:
    dirs = ["/usr/sbin:/usr/bin:/sbin:/bin"]
    if extra_dirs:
        # newest first: /usr/lib/postgresql/16/bin before .../15/bin
        dirs += sorted(
            glob.glob(extra_dirs), key=lambda d: [int(x) for x in re.findall(r"\d+", d)], reverse=True
        )
    return shutil.which(binary) or shutil.which(binary, path=":".join(dirs))


def debian_binary(binary: str, package: str, extra_dirs: str = "") -> str:
    """The path of ``binary``, installing the Debian ``package`` that ships it when it is missing.

    ``extra_dirs`` is a glob of folders off the path where the package puts it
    (PostgreSQL's server programs live in /usr/lib/postgresql/<version>/bin).
    """
    found = _find(binary, extra_dirs)
    if found:
        return found
    _apt_updated()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        check=True,
        capture_output=True,
        env=env,
        timeout=900,
    )
    found = _find(binary, extra_dirs)
    assert found, f"apt-get installed {package} but {binary} is not on the path"
    return found


# -- PostgreSQL and Redis, one server each per test session ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start in 60 s: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def postgres_server(durable: bool = False) -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1 (trust auth); yields the URL of its ``postgres`` db.

    Without ``durable`` it runs with fsync and synchronous commits off (fast tests); with it, with
    PostgreSQL's own defaults, as a production server runs (benchmarks).

    PostgreSQL refuses to run as root: as root, it runs as the ``postgres`` user the package creates.
    """
    initdb = Path(debian_binary("initdb", "postgresql", "/usr/lib/postgresql/*/bin")).resolve()
    postgres = initdb.parent / "postgres"
    root = Path(tempfile.mkdtemp(prefix="ragline-pg-"))
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    log = root / "postgres.log"
    data = root / "data"
    subprocess.run(
        [str(initdb), "-D", str(data), "-U", "ragline", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
        **as_user,
    )
    port = _free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(root),
        "max_connections": "300",
        "shared_buffers": "64MB",
    }
    if not durable:
        settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    args = [str(postgres), "-D", str(data)]
    for k, v in settings.items():
        args += ["-c", f"{k}={v}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **as_user)
    url = f"postgresql://ragline@127.0.0.1:{port}/postgres"
    isready = initdb.parent / "pg_isready"

    def ready() -> bool:
        probe = [str(isready), "-h", "127.0.0.1", "-p", str(port), "-U", "ragline", "-d", "postgres"]
        return subprocess.run(probe, capture_output=True).returncode == 0

    try:
        _wait(ready, proc, log, "postgres")
        yield url
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway Redis on 127.0.0.1 (no persistence); yields its URL."""
    binary = debian_binary("redis-server", "redis-server")
    root = Path(tempfile.mkdtemp(prefix="ragline-redis-"))
    port = _free_port()
    log = root / "redis.log"
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(root), "--save", ""]
    args += ["--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        _wait(ready, proc, log, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The session's PostgreSQL server (its maintenance database); see ``fresh_database``."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The session's Redis server; tests keep apart by key prefix."""
    with redis_server() as url:
        yield url


def fresh_database(postgres_url: str) -> str:
    """An empty namespace on the session's server: the URL of a new schema, first on the search path.

    A schema costs milliseconds where CREATE DATABASE costs a quarter of a second, and isolates
    tables, functions and migrations alike (nothing ragline runs names a schema).
    """
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    sep = "&" if "?" in postgres_url else "?"
    return f"{postgres_url}{sep}options=-csearch_path%3D{name}"
