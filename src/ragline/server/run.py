"""`ragline serve`: the app under uvicorn, with the connection limits and graceful shutdown."""

from __future__ import annotations

import uvicorn

from ragline.config import Settings
from ragline.engine import Engine
from ragline.server.app import create_app
from ragline.server.connection import ConnectionLimits, limited_protocol


def serve(
    settings: Settings, *, host: str | None = None, port: int | None = None, access_log: bool = False
) -> None:
    """Serve until SIGINT/SIGTERM.

    On SIGTERM uvicorn stops accepting at once, lets in-flight requests finish for up to
    ``server.shutdown_timeout_s`` and then cancels them; the app's shutdown then cancels running
    jobs, stops the model threads and closes the collections.
    """
    s = settings.server
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
