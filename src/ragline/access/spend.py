"""The spend writer: settlements and spend records, written in batches off the request path.

``add`` only appends to a list. One writer task commits whatever has accumulated in one
transaction, ``LINGER_S`` after the first of it arrived, or at once when a whole batch is waiting
(group commit): under load the batches grow instead of the transactions.
``close`` drains everything before it returns, so nothing is lost on a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass

from ragline.config import SpendSettings
from ragline.store.base import RecordStore, StoreError
from ragline.store.records import Settlement, SpendRecord

log = logging.getLogger(__name__)

LINGER_S = 0.02
"""Unless a whole batch is waiting, the writer waits this long before each transaction, so
requests share one (at 1,000 requests/s, ~20 per transaction instead of 1)."""


@dataclass
class SpendStats:
    settlements_written: int = 0
    records_written: int = 0
    records_dropped: int = 0
    """Spend records dropped because more than ``spend.max_pending`` were waiting."""
    batches: int = 0
    failures: int = 0
    """Batches that failed and were retried."""


class SpendRecorder:
    def __init__(self, store: RecordStore, settings: SpendSettings | None = None) -> None:
        self._store = store
        self._settings = settings or SpendSettings()
        self._settlements: deque[Settlement] = deque()
        self._records: deque[SpendRecord] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = SpendStats()

    @property
    def pending(self) -> int:
        return len(self._settlements) + len(self._records)

    def add(self, settlement: Settlement | None = None, record: SpendRecord | None = None) -> None:
        """Queue a settlement and/or a spend record (never blocks, never raises)."""
        if settlement is not None:
            self._settlements.append(settlement)
        if record is not None:
            self._records.append(record)
            while len(self._records) > self._settings.max_pending:
                self._records.popleft()
                self.stats.records_dropped += 1
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ragline-spend-writer")

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        if self._task is None:
            self.start()
        await self._idle.wait()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Write everything still queued (for at most ``timeout_s`` if the store is down), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is None and self.pending:
            self.start()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, timeout_s)
        except TimeoutError:
            log.error("spend writer: %d settlements/records not written at shutdown", self.pending)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self.pending:
                self._idle.set()
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            n = self._settings.batch_size
            if not self._closing and len(self._settlements) < n and len(self._records) < n:
                # gather what arrives meanwhile: one transaction for many requests, not one per
                # request (a durable commit waits for the disk while the next requests arrive)
                await asyncio.sleep(LINGER_S)
            settlements = [self._settlements.popleft() for _ in range(min(n, len(self._settlements)))]
            records = [self._records.popleft() for _ in range(min(n, len(self._records)))]
            try:
                await self._store.commit_spend(settlements, records)
            except StoreError as e:
                self.stats.failures += 1
                log.warning("spend writer: batch failed, retrying in %.2f s: %s", backoff, e)
                self._settlements.extendleft(reversed(settlements))
                self._records.extendleft(reversed(records))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            self.stats.batches += 1
            self.stats.settlements_written += len(settlements)
            self.stats.records_written += len(records)
