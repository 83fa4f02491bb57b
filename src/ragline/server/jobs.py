"""Background jobs (ingestion, async chat completions) with progress, polled by id."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ragline.ingest.pipeline import Progress

JobStatus = Literal["queued", "running", "succeeded", "failed"]


@dataclass
class Job:
    id: str
    kind: str
    status: JobStatus = "queued"
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    docs_done: int = 0
    docs_total: int = 0
    chunks_done: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None

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


class JobStore:
    """Runs jobs on one background thread each; keeps the last ``keep`` finished jobs."""

    def __init__(self, keep: int = 1000) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._keep = keep
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def submit(self, kind: str, work: Callable[[Callable[[Progress], None]], dict[str, Any]]) -> Job:
        job = Job(id="job-" + uuid.uuid4().hex[:20], kind=kind)
        with self._lock:
            self._jobs[job.id] = job
            self._trim()

        def on_progress(p: Progress) -> None:
            job.docs_done, job.docs_total, job.chunks_done = p.docs_done, p.docs_total, p.chunks_done

        def run() -> None:
            job.status = "running"
            try:
                job.result = work(on_progress)
                job.status = "succeeded"
            except Exception as e:  # the job reports any failure; the server keeps going
                job.error = f"{type(e).__name__}: {e}"
                job.status = "failed"
            finally:
                job.finished_at = time.time()

        threading.Thread(target=run, name=job.id, daemon=True).start()
        return job

    def submit_async(self, kind: str, work: Callable[[], Awaitable[dict[str, Any]]]) -> Job:
        """Run ``work`` as a task on the running event loop (jobs that await rather than block)."""
        job = Job(id="job-" + uuid.uuid4().hex[:20], kind=kind)
        with self._lock:
            self._jobs[job.id] = job
            self._trim()

        async def run() -> None:
            job.status = "running"
            try:
                job.result = await work()
                job.status = "succeeded"
            except Exception as e:  # the job reports any failure; the server keeps going
                job.error = f"{type(e).__name__}: {e}"
                job.status = "failed"
            finally:
                job.finished_at = time.time()

        # a fresh context: the job outlives the request that submitted it
        task = asyncio.get_running_loop().create_task(run(), name=job.id, context=contextvars.Context())
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)
        return job

    def _trim(self) -> None:
        done = [j for j in self._jobs.values() if j.finished_at is not None]
        for j in sorted(done, key=lambda j: j.finished_at or 0)[: max(0, len(done) - self._keep)]:
            del self._jobs[j.id]
