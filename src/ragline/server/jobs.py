"""Background jobs (ingestion, async chat completions) with progress, polled by id.

Every job is bounded:

- ingest jobs run on at most ``max_running_ingest`` worker threads and async chat jobs at most
  ``max_running_async`` at a time; the others wait in the queue, which holds at most
  ``max_queued`` jobs: a job submitted past that is refused (``JobRefused``: 429 with Retry-After);
- one owner (the API key that submitted it; a request without a key has none) holds at most
  ``max_per_owner`` unfinished jobs;
- a job's stored result is at most ``max_result_bytes`` (JSON), else the job fails;
- a running job is stopped after ``timeout_s``; any job can be cancelled (``cancel``): a queued one
  at once, a running ingestion between two embedding batches (or at once while its file is parsed:
  the parser process is killed), an async chat job at its next await;
- finished jobs are forgotten ``ttl_s`` after they end, and past ``keep`` jobs or ``keep_bytes`` of
  stored results the oldest go first.

A failed job's error is a reason for the user: a ragline error's message, never an exception's
class name or a library's internals (those go to the server log).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ragline.errors import IngestCancelled, MissingDependency, ModelLoadError, RaglineError
from ragline.ingest.pipeline import Progress
from ragline.server.errors import APIError

log = logging.getLogger("ragline.jobs")

JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]
#: An ingest job's work: called with a progress callback and a stop check (True: return soon).
SyncWork = Callable[[ProgressFn, StopFn], dict[str, Any]]
Cleanup = Callable[[], None]

#: Entries of an ingest report's ``failed`` / ``warnings`` lists a job keeps (the totals are kept).
REPORT_LIST_LIMIT = 100


class JobRefused(Exception):
    """A job is not accepted now: the queue is full, or its owner holds too many jobs."""

    def __init__(self, message: str, *, code: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after = retry_after


@dataclass
class Job:
    id: str
    kind: str
    status: JobStatus = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    docs_done: int = 0
    docs_total: int = 0
    chunks_done: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    #: The API key that submitted it (its unfinished jobs are capped); None: no key.
    owner: str | None = None
    #: The tenant that may see it; None: anyone (an app built without access control).
    tenant: str | None = None
    cancel_requested: bool = False
    timed_out: bool = False
    #: ``time.monotonic()`` past which the job is stopped; None = no limit.
    deadline: float | None = None
    #: The size of its stored result (JSON bytes), counted against ``keep_bytes``.
    result_bytes: int = 0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def should_stop(self) -> bool:
        if self.cancel_requested:
            return True
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "job",
            "kind": self.kind,
            "status": self.status,
            "created_at": int(self.created_at),
            "finished_at": int(self.finished_at) if self.finished_at else None,
            "progress": {"documents": self.docs_done, "total": self.docs_total, "chunks": self.chunks_done},
            "result": self.result,
            "error": self.error,
        }


def bounded_report(report: dict[str, Any], limit: int = REPORT_LIST_LIMIT) -> dict[str, Any]:
    """An ingest report with its ``failed`` and ``warnings`` lists cut to ``limit`` entries (the
    full counts stay, as ``failed_total`` and ``warnings_total``)."""
    out = dict(report)
    for key in ("failed", "warnings"):
        items = out.get(key)
        if isinstance(items, list):
            out[f"{key}_total"] = len(items)
            out[key] = items[:limit]
    return out


def public_reason(e: BaseException, job_id: str = "") -> str:
    """What a user is told about a failure: ragline's own message, or a generic line."""
    if isinstance(e, APIError):
        return e.message
    if isinstance(e, RaglineError) and not isinstance(e, ModelLoadError | MissingDependency):
        return str(e)
    log.error("job %s failed", job_id, exc_info=e)
    return "internal error: the job could not be completed (see the server log)"


class JobStore:
    """Runs and keeps jobs within the bounds above (see the module docstring)."""

    def __init__(
        self,
        *,
        max_running_ingest: int = 2,
        max_running_async: int = 4,
        max_queued: int = 64,
        max_per_owner: int = 16,
        max_result_bytes: int = 1024 * 1024,
        timeout_s: float = 3600.0,
        ttl_s: float = 3600.0,
        keep: int = 1000,
        keep_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.max_running_ingest = max_running_ingest
        self.max_running_async = max_running_async
        self.max_queued = max_queued
        self.max_per_owner = max_per_owner
        self.max_result_bytes = max_result_bytes
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.keep = keep
        self.keep_bytes = keep_bytes
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when an ingest job ends
        # ingest jobs waiting for a worker, with their work and cleanup
        self._queue: deque[tuple[Job, SyncWork, Cleanup | None]] = deque()
        self._workers = 0
        self._running_ingest = 0
        self._async_waiting = 0
        self._async_running = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._durations: deque[float] = deque(maxlen=20)
        self._closed = False

    # -- reading -----------------------------------------------------------------------------

    def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job, or None (unknown, expired, or another tenant's)."""
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            if job is None or (job.tenant is not None and job.tenant != tenant):
                return None
            return job

    def counts(self) -> dict[str, int]:
        """Jobs by state: queued, running, finished (kept)."""
        with self._lock:
            queued = self._waiting()
            running = self._running_ingest + self._async_running
            finished = sum(1 for j in self._jobs.values() if j.finished)
            return {"queued": queued, "running": running, "finished": finished}

    # -- submitting ----------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        work: SyncWork,
        *,
        owner: str | None = None,
        tenant: str | None = None,
        cleanup: Cleanup | None = None,
    ) -> Job:
        """Queue ``work`` for a worker thread. ``cleanup`` runs once when the job ends, whether its
        work ran or not (a job cancelled while queued). Raises JobRefused (cleanup not run)."""
        with self._lock:
            starts_now = self._running_ingest + len(self._queue) < self.max_running_ingest
            job = self._admit(kind, owner, tenant, starts_now)
            self._queue.append((job, work, cleanup))
            if self._workers < self.max_running_ingest:
                self._workers += 1
                threading.Thread(target=self._worker, name="ragline-job-worker", daemon=True).start()
        return job

    def submit_async(
        self,
        kind: str,
        work: Callable[[], Awaitable[dict[str, Any]]],
        *,
        owner: str | None = None,
        tenant: str | None = None,
    ) -> Job:
        """Run ``work`` as a task on the running event loop (jobs that await rather than block)."""
        with self._lock:
            starts_now = self._async_running + self._async_waiting < self.max_running_async
            job = self._admit(kind, owner, tenant, starts_now)
            self._async_waiting += 1
        # a fresh context: the job outlives the request that submitted it
        task = asyncio.get_running_loop().create_task(
            self._run_async(job, work), name=job.id, context=contextvars.Context()
        )
        self._tasks[job.id] = task  # keep a reference until it is done
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))
        return job

    def _admit(self, kind: str, owner: str | None, tenant: str | None, starts_now: bool) -> Job:
        """Check the bounds and register a queued job (caller holds the lock)."""
        self._expire()
        if self._closed:
            raise JobRefused("the server is shutting down", code="shutting_down", retry_after=5)
        if owner is not None:
            mine = sum(1 for j in self._jobs.values() if j.owner == owner and not j.finished)
            if mine >= self.max_per_owner:
                raise JobRefused(
                    f"too many unfinished jobs: at most {self.max_per_owner} per API key "
                    "(server.max_jobs_per_key); wait for one to finish or cancel one",
                    code="too_many_jobs",
                    retry_after=self._retry_after(),
                )
        if not starts_now and self._waiting() >= self.max_queued:
            raise JobRefused(
                f"the job queue is full ({self.max_queued} jobs waiting, server.max_queued_jobs); "
                "retry later",
                code="job_queue_full",
                retry_after=self._retry_after(),
            )
        job = Job(id="job-" + uuid.uuid4().hex[:20], kind=kind, owner=owner, tenant=tenant)
        self._jobs[job.id] = job
        return job

    def _waiting(self) -> int:
        """Jobs waiting for a free slot (not those a worker or the semaphore is about to take)."""
        ingest = self._running_ingest + len(self._queue) - self.max_running_ingest
        chat = self._async_running + self._async_waiting - self.max_running_async
        return max(0, ingest) + max(0, chat)

    def _retry_after(self) -> float:
        """Seconds until a slot is likely free: the mean duration of recent jobs, 1 to 60 s."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 5.0
        return float(max(1, min(60, round(mean))))

    # -- cancelling ------------------------------------------------------------------------------

    def cancel(self, job_id: str, tenant: str | None = None) -> Job | None:
        """Ask a job to stop; returns it (None if unknown). A queued job is cancelled at once; a
        running one is ``cancelling`` until its work stops. A finished job is left as it is."""
        cleanup: Cleanup | None = None
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            if job is None or (job.tenant is not None and job.tenant != tenant):
                return None
            if job.finished:
                return job
            job.cancel_requested = True
            queued = next((entry for entry in self._queue if entry[0] is job), None)
            if queued is not None:
                self._queue.remove(queued)
                cleanup = queued[2]
                self._finish(job, "cancelled", error="cancelled on request")
            elif job.status != "queued" or job.id not in self._tasks:
                job.status = "cancelling"
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
        if cleanup is not None:
            _run_cleanup(cleanup, job)
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, cancel every unfinished one, wait up to ``timeout`` s for the running
        ingestions to stop (they stop between two embedding batches)."""
        with self._lock:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            for job, _, _ in dropped:
                job.cancel_requested = True
                self._finish(job, "cancelled", error="cancelled: the server shut down")
            running = [job for job in self._jobs.values() if not job.finished]
            for job in running:
                job.cancel_requested = True
        if dropped or running:
            log.warning(
                "shutting down: %d queued jobs cancelled, %d running jobs cancelling: %s",
                len(dropped),
                len(running),
                " ".join(j.id for j in [*(d[0] for d in dropped), *running][:100]),
            )
        for _, _, cleanup in dropped:
            if cleanup is not None:
                _run_cleanup(cleanup, None)
        for task in list(self._tasks.values()):
            task.cancel()
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._running_ingest and time.monotonic() < deadline:
                self._idle.wait(timeout=max(0.01, deadline - time.monotonic()))

    # -- running -----------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._workers -= 1
                    return
                job, work, cleanup = self._queue.popleft()
                self._running_ingest += 1
                self._start(job)
            try:
                self._run_sync(job, work, cleanup)
            finally:
                with self._lock:
                    self._running_ingest -= 1
                    self._idle.notify_all()

    def _start(self, job: Job) -> None:
        job.status = "running"
        job.started_at = time.time()
        if self.timeout_s > 0:
            job.deadline = time.monotonic() + self.timeout_s

    def _run_sync(self, job: Job, work: SyncWork, cleanup: Cleanup | None) -> None:
        def on_progress(p: Progress) -> None:
            job.docs_done, job.docs_total, job.chunks_done = p.docs_done, p.docs_total, p.chunks_done

        try:
            result = work(on_progress, job.should_stop)
            self._succeed(job, result)
        except IngestCancelled:
            self._stopped(job)
        except Exception as e:  # the job reports any failure; the server keeps going
            if job.should_stop():  # the failure came from stopping it
                self._stopped(job)
            else:
                with self._lock:
                    self._finish(job, "failed", error=public_reason(e, job.id))
        finally:
            if cleanup is not None:
                _run_cleanup(cleanup, job)

    async def _run_async(self, job: Job, work: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        waiting = True
        running = False
        try:
            if self._semaphore is None:
                self._semaphore = asyncio.Semaphore(self.max_running_async)
            async with self._semaphore:
                with self._lock:
                    self._async_waiting -= 1
                    waiting = False
                    self._async_running += 1
                    running = True
                    self._start(job)
                try:
                    async with asyncio.timeout(self.timeout_s if self.timeout_s > 0 else None):
                        result = await work()
                except TimeoutError:
                    job.timed_out = True
                    self._stopped(job)
                    return
                self._succeed(job, result)
        except asyncio.CancelledError:
            self._stopped(job)  # cancelled on request or at shutdown: the task ends here
        except Exception as e:  # the job reports any failure; the server keeps going
            with self._lock:
                self._finish(job, "failed", error=public_reason(e, job.id))
        finally:
            with self._lock:
                if waiting:
                    self._async_waiting -= 1
                if running:
                    self._async_running -= 1

    def _succeed(self, job: Job, result: dict[str, Any]) -> None:
        size = len(json.dumps(result, default=str))
        with self._lock:
            if size > self.max_result_bytes:
                self._finish(
                    job,
                    "failed",
                    error=f"the job's result is {size} bytes, over the limit of {self.max_result_bytes} "
                    "(server.max_job_bytes)",
                )
            else:
                job.result_bytes = size
                self._finish(job, "succeeded", result=result)

    def _stopped(self, job: Job) -> None:
        with self._lock:
            if job.timed_out and not job.cancel_requested:
                error = f"the job ran longer than {self.timeout_s:g} s (server.job_timeout_s) and was stopped"
                self._finish(job, "failed", error=error)
            else:
                self._finish(job, "cancelled", error="cancelled on request")

    def _finish(
        self, job: Job, status: JobStatus, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """Record the outcome (caller holds the lock)."""
        if job.finished:
            return
        job.status = status
        job.result = result
        job.error = error
        job.finished_at = time.time()
        if job.started_at is not None:
            self._durations.append(job.finished_at - job.started_at)
        self._trim()

    def _expire(self) -> None:
        """Forget finished jobs older than ``ttl_s`` (caller holds the lock)."""
        cutoff = time.time() - self.ttl_s
        for job_id in [
            j.id for j in self._jobs.values() if j.finished_at is not None and j.finished_at < cutoff
        ]:
            del self._jobs[job_id]

    def _trim(self) -> None:
        """Past ``keep`` finished jobs, or ``keep_bytes`` of their results, the oldest go first."""
        done = sorted(
            (j for j in self._jobs.values() if j.finished_at is not None), key=lambda j: j.finished_at or 0
        )
        held = sum(j.result_bytes for j in done)
        excess = len(done) - self.keep
        for j in done:
            if excess <= 0 and held <= self.keep_bytes:
                break
            del self._jobs[j.id]
            excess -= 1
            held -= j.result_bytes


def _run_cleanup(cleanup: Cleanup, job: Job | None) -> None:
    try:
        cleanup()
    except Exception as e:  # a cleanup failure must not take the worker down
        log.warning("cleanup of job %s failed: %r", job.id if job else "?", e)
