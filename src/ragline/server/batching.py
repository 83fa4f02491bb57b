"""Dynamic batching: concurrent requests share one model call.

Requests queue up; one worker task takes as many as fit in ``max_batch_size``
texts and runs the model once for all of them, in a dedicated worker thread (never
on the event loop). The oldest queued request waits at most ``max_wait_ms`` for
others to join; while the model is busy with one batch the next one fills up on its
own, so under load batches grow without any added wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ragline.observability.metrics import EMBEDDING_BATCH_SIZE, EMBEDDING_QUEUE_DEPTH

T = TypeVar("T")


@dataclass(slots=True)
class _Pending(Generic[T]):
    texts: list[str]
    future: asyncio.Future[tuple[list[T], float]]
    queued_at: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[T]):
    """Batches calls of ``fn(texts) -> one result per text`` across concurrent callers."""

    def __init__(
        self,
        fn: Callable[[list[str]], Sequence[T]],
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._name = name
        self._pending: deque[_Pending[T]] = deque()
        self._queued_texts = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        #: Model calls made so far (for tests and diagnostics).
        self.calls = 0

    async def submit(self, texts: list[str]) -> tuple[list[T], float]:
        """Results for ``texts`` (in order) and the seconds the model call that served them took."""
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        item: _Pending[T] = _Pending(texts, loop.create_future())
        self._pending.append(item)
        self._queued_texts += len(texts)
        EMBEDDING_QUEUE_DEPTH.set(len(self._pending))
        self._wakeup.set()
        return await item.future

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is not None and self._loop is loop and not self._worker.done():
            return
        self._loop = loop
        self._wakeup = asyncio.Event()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=self._name)
        # a fresh context: the worker serves many requests and must not carry the first one's state
        self._worker = loop.create_task(self._run(), name=self._name, context=contextvars.Context())

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for item in self._pending:
            if not item.future.done():
                item.future.cancel()
        self._pending.clear()
        self._queued_texts = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._fill(self._pending[0].queued_at + self.max_wait)
            batch = self._take()
            if batch:
                await self._serve(loop, batch)

    async def _fill(self, deadline: float) -> None:
        """Wait for more requests until the batch is full or the oldest one has waited long enough."""
        while self._queued_texts < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _take(self) -> list[_Pending[T]]:
        batch: list[_Pending[T]] = []
        size = 0
        while self._pending:
            head = self._pending[0]
            if head.future.done():  # the caller went away
                self._pending.popleft()
                self._queued_texts -= len(head.texts)
                continue
            if batch and size + len(head.texts) > self.max_batch_size:
                break
            self._pending.popleft()
            self._queued_texts -= len(head.texts)
            batch.append(head)
            size += len(head.texts)
        EMBEDDING_QUEUE_DEPTH.set(len(self._pending))
        return batch

    async def _serve(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[T]]) -> None:
        texts = [t for item in batch for t in item.texts]
        self.calls += 1
        EMBEDDING_BATCH_SIZE.observe(len(texts))
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._fn, texts)
            if len(results) != len(texts):
                raise RuntimeError(f"{self._name}: {len(results)} results for {len(texts)} inputs")
        except asyncio.CancelledError:  # shutting down: nobody waits forever
            for item in batch:
                item.future.cancel()
            raise
        except Exception as e:  # every caller of the batch gets the model's error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        seconds = time.perf_counter() - start
        offset = 0
        for item in batch:
            n = len(item.texts)
            if not item.future.done():
                item.future.set_result((list(results[offset : offset + n]), seconds))
            offset += n
