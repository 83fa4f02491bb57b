"""Tokens from a model thread to the event loop, and stopping a generation nobody waits for.

A blocking model call runs on a worker thread and reports each generated piece through a
``TokenCallback``; returning True from it tells the model to stop generating, so the slot and
the CPU are freed at once instead of after ``max_tokens`` more tokens nobody will read.

- ``TokenBridge`` (streams): the event loop reads the pieces from an asyncio queue; when the
  reader goes away (the client disconnected, a timeout fired), ``cancel()`` makes the next
  callback return True.
- ``stop_when_abandoned`` (non-streamed calls): a callback that queues nothing and returns True
  once the awaiting coroutine has left, cancelled (the client disconnected, a timeout fired) or
  not, so a generation whose answer will never be read stops at its next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

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


@contextlib.contextmanager
def stop_when_abandoned() -> Iterator[Callable[[str], bool]]:
    """A token callback for a non-streamed model call awaited inside the ``with`` block.

    ``with stop_when_abandoned() as on_token: c = await run_in_thread(model_call, on_token)``:
    when the block is left before the call returns (the awaiting task was cancelled), the
    callback starts returning True and the generation, still running in its thread, stops.
    """
    left = threading.Event()

    def on_token(_: str) -> bool:
        return left.is_set()

    try:
        yield on_token
    finally:
        left.set()
