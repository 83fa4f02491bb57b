"""`ragline serve`: the app under uvicorn, with the connection limits and graceful shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import uvicorn

from ragline.access.service import auth_in_use
from ragline.answer.llm import smollm2_path
from ragline.config import Settings
from ragline.embed.factory import minilm_paths
from ragline.engine import Engine
from ragline.errors import ConfigError
from ragline.index.factory import check_installed as check_index_installed
from ragline.optional import require
from ragline.server.app import create_app
from ragline.server.connection import ConnectionLimits, limited_protocol
from ragline.state.factory import check_installed as check_state_installed
from ragline.store.factory import check_installed as check_store_installed

log = logging.getLogger("ragline.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_dependencies(settings: Settings) -> None:
    """Raise MissingDependency (one line: what to install) unless everything the settings use is there.

    The server loads its models in the background and opens its store in the app's lifespan; a
    package missing there would be a traceback, or a server that never gets ready. This finds the
    same packages before uvicorn starts, without loading or opening anything.
    """
    if settings.embedder.kind == "minilm":
        minilm_paths()
    if settings.llm.kind == "smollm2":
        smollm2_path()
    check_store_installed(settings)
    check_state_installed(settings)
    check_index_installed(settings)
    if settings.rerank.kind == "remote":
        require("httpx", extra="rerank", feature="rerank.kind=remote")
    if settings.answer.agent.tools:
        require("httpx", extra="tools", feature="answer.agent.tools")


def check_exposure(settings: Settings, host: str, *, insecure: bool) -> None:
    """Refuse to serve open (no keys configured) on anything but loopback, unless ``insecure``."""
    if is_loopback(host) or asyncio.run(auth_in_use(settings)):
        return
    if not insecure:
        raise ConfigError(
            f"refusing to serve on {host} with no API keys: anyone who can reach it could use every "
            "route. Set RAGLINE_ADMIN_KEY (or auth.admin_key_file) or create a key with `ragline keys "
            "create`, bind to 127.0.0.1, or pass --insecure to serve open anyway"
        )
    log.warning("serving on %s with no API keys (--insecure): every route is open to anyone", host)


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    access_log: bool = False,
    insecure: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM.

    On SIGTERM uvicorn stops accepting at once, lets in-flight requests finish for up to
    ``server.shutdown_timeout_s`` and then cancels them; the app's shutdown then cancels running
    jobs, stops the model threads and closes the collections.
    """
    s = settings.server
    check_dependencies(settings)
    check_exposure(settings, host or s.host, insecure=insecure)
    engine = Engine(settings)
    app = create_app(engine, local_model=s.local_model, max_body_bytes=s.max_body_bytes)
    config = uvicorn.Config(
        app,
        host=host or s.host,
        port=port or s.port,
        loop="uvloop",
        http=limited_protocol(ConnectionLimits.from_settings(s)),
        log_level="info",
        access_log=access_log,  # off by default: a formatted, written line per request on the hot path
        timeout_keep_alive=s.keepalive_timeout_s,  # type: ignore[arg-type]  # a float works as well
        timeout_graceful_shutdown=s.shutdown_timeout_s,  # type: ignore[arg-type]
        backlog=min(2048, s.max_connections),
    )
    uvicorn.Server(config).run()
