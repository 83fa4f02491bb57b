"""Dynamic batching: concurrent requests share one model call.

Requests queue up; one worker task takes as many texts as fit in ``max_batch_size``
and runs the model once for all of them, in a dedicated worker thread (never on the
event loop). The oldest queued request waits at most ``max_wait_ms`` for others to
join; while the model is busy with one batch the next one fills up on its own, so
under load batches grow without any added wait.

A batch is bounded by its texts (``max_batch_size``) and, given a ``weight`` per
text (for embeddings, its estimated tokens), by their total weight
(``max_batch_weight``; a batch always takes at least one text): long texts make
smaller batches, so one model call stays short. A request larger than a batch is
split: each batch takes what fits of it. Requests not served at all yet go first
(a batch with one of them takes only those), and partly served ones take turns, so
a small request arriving while a large one runs waits for the batch running then,
not for the whole large request (fairness).
A request whose caller went away (cancelled: the client disconnected) is dropped
from the queue: its texts not yet embedded are never run.
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
    #: Texts handed to model calls so far (batches run one at a time, in order).
    taken: int = 0
    #: Each text's weight (None: the batcher has no weights).
    weights: list[int] | None = None
    #: Results of the texts served so far, in order, and the model seconds they took.
    results: list[T] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def left(self) -> int:
        return len(self.texts) - self.taken

    def weight_left(self) -> int:
        return sum(self.weights[self.taken :]) if self.weights is not None else 0


class DynamicBatcher(Generic[T]):
    """Batches calls of ``fn(texts) -> one result per text`` across concurrent callers."""

    def __init__(
        self,
        fn: Callable[[list[str]], Sequence[T]],
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        name: str = "batcher",
        weight: Callable[[str], int] | None = None,
        max_batch_weight: int | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if (weight is None) != (max_batch_weight is None) or (max_batch_weight or 1) < 1:
            raise ValueError("weight and max_batch_weight (>= 1) go together")
        self._fn = fn
        self._weight = weight
        self.max_batch_weight = max_batch_weight
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._name = name
        self._pending: deque[_Pending[T]] = deque()
        self._queued_texts = 0
        self._queued_weight = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        #: Model calls made so far (for tests and diagnostics).
        self.calls = 0

    async def submit(self, texts: list[str]) -> tuple[list[T], float]:
        """Results for ``texts`` (in order) and the seconds the model calls that served them took.

        Cancelling the call drops the texts not yet embedded.
        """
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        item: _Pending[T] = _Pending(texts, loop.create_future())
        if self._weight is not None:
            item.weights = [self._weight(t) for t in texts]
            self._queued_weight += sum(item.weights)
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
        self._queued_texts = self._queued_weight = 0
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
        while self._queued_texts < self.max_batch_size and not self._weight_full():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _weight_full(self) -> bool:
        return self.max_batch_weight is not None and self._queued_weight >= self.max_batch_weight

    def _take(self) -> list[tuple[_Pending[T], int, int]]:
        """The next batch: (request, first text, end) slices within the size and weight bounds.

        Requests not served at all yet come first, in arrival order, and a batch that has one of
        them takes only those: a small request arriving while a large one is being served waits
        for the batch running then, not for the large one's next batches. Without new requests,
        the partly served ones take turns (each goes to the back once it had a batch).
        """
        for item in [p for p in self._pending if p.future.done()]:  # callers gone: never run the rest
            self._pending.remove(item)
            self._queued_texts -= item.left
            self._queued_weight -= item.weight_left()
        fresh = any(p.taken == 0 for p in self._pending)
        batch: list[tuple[_Pending[T], int, int]] = []
        waiting: list[_Pending[T]] = []
        unfinished: list[_Pending[T]] = []
        size = weight = 0
        limit = self.max_batch_weight
        for head in self._pending:
            full = size >= self.max_batch_size or (limit is not None and weight >= limit)
            if full or (fresh and head.taken > 0):
                waiting.append(head)
                continue
            n = min(head.left, self.max_batch_size - size)
            if head.weights is not None and limit is not None:
                taken, w = 0, 0
                for x in head.weights[head.taken : head.taken + n]:
                    if (size or taken) and weight + w + x > limit:
                        break  # a batch takes at least one text, however heavy
                    taken, w = taken + 1, w + x
                n = taken
                weight += w
                self._queued_weight -= w
            if n == 0:  # nothing more of it fits
                waiting.append(head)
                continue
            batch.append((head, head.taken, head.taken + n))
            head.taken += n
            self._queued_texts -= n
            size += n
            if head.left:
                unfinished.append(head)
        self._pending = deque([*waiting, *unfinished])  # served ones to the back: the others go first
        EMBEDDING_QUEUE_DEPTH.set(len(self._pending))
        return batch

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, batch: list[tuple[_Pending[T], int, int]]
    ) -> None:
        texts = [t for item, start, end in batch for t in item.texts[start:end]]
        self.calls += 1
        EMBEDDING_BATCH_SIZE.observe(len(texts))
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._fn, texts)
            if len(results) != len(texts):
                raise RuntimeError(f"{self._name}: {len(results)} results for {len(texts)} inputs")
        except asyncio.CancelledError:  # shutting down: nobody waits forever
            for item, _, _ in batch:
                item.future.cancel()
            raise
        except Exception as e:  # every caller of the batch gets the model's error
            for item, _, _ in batch:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        seconds = time.perf_counter() - start
        offset = 0
        for item, first, end in batch:
            n = end - first
            if not item.future.done():
                item.results.extend(results[offset : offset + n])
                item.seconds += seconds
                if end == len(item.texts):
                    item.future.set_result((item.results, item.seconds))
            offset += n
