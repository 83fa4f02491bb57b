"""Abandoned work is cancelled: a non-streamed request whose client disconnects stops its work.

A streamed response notices a client that went away when it writes (Starlette's
``StreamingResponse`` and the fast path's ``_stream`` watch for ``http.disconnect``). A
non-streamed one writes only at the end, so without a watch its work (a generation, a batch of
embeddings) would run to completion for nobody. ``cancel_on_disconnect`` awaits the work while
watching the request's ``receive`` channel: once the body has been read, the next message the
server hands over is ``http.disconnect``, and the work is cancelled. What cancellation stops is
the callee's business: the embedding batcher drops the texts not yet embedded, a generation in
a model thread stops at its next token (``answer/tokens.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")

#: The status recorded (metrics, access log) for a request whose client left first (nginx's).
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client went away before the answer; its work was cancelled."""


#: How long work runs before its client is watched. Most proxied calls to a fast upstream end
#: sooner, and then cost no watch task at all (a task per request was 18-20% of the gateway's
#: requests per core in bench/gateway_overhead.py); work that outlives it, such as a generation,
#: is watched from then on, so an abandoned one stops at most this much later.
WATCH_AFTER_S = 0.05


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T], *, after: float = WATCH_AFTER_S) -> T:
    """``await work``, cancelled (raising ``ClientDisconnected``) if the client disconnects first.

    The watch starts once the work has run for ``after`` seconds. Call it only once the request
    body has been read: every message after the body is read as the end of the request.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    def start_watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(after, start_watch)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientDisconnected from None
        raise  # cancelled from elsewhere (shutdown): not ours to swallow
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
