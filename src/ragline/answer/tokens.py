"""Streaming tokens from a model thread to the event loop, with cancellation.

A blocking model call runs on a worker thread and reports each generated piece through a
``TokenCallback``; the event loop reads them from an asyncio queue. When the reader goes away
(the client disconnected, a timeout fired), ``cancel()`` makes the next callback return True,
which tells the model to stop generating: the slot and the CPU are freed at once instead of
after ``max_tokens`` more tokens nobody will read.
"""

from __future__ import annotations

import asyncio
import threading

#: Marks the end of the stream in the queue.
DONE = object()


class TokenBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = threading.Event()

    def on_token(self, token: str) -> bool:
        """The model's callback (worker thread): queue the piece; True = stop generating."""
        if self._cancelled.is_set():
            return True
        self._loop.call_soon_threadsafe(self._queue.put_nowait, token)
        return False

    def finish(self) -> None:
        """The model call returned (or failed): wake the reader with ``DONE``."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, DONE)

    def cancel(self) -> None:
        """The reader is gone: the model stops at its next token."""
        self._cancelled.set()

    async def get(self) -> object:
        """The next piece, or ``DONE``."""
        return await self._queue.get()
