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


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """``await work``, cancelled (raising ``ClientDisconnected``) if the client disconnects first.

    Call it only once the request body has been read: every message after the body is read as
    the end of the request.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientDisconnected from None
        raise  # cancelled from elsewhere (shutdown): not ours to swallow
    finally:
        watcher.cancel()
