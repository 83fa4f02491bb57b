"""Parsing in worker processes: what a file costs to parse is a worker's, never the caller's.

A parser (pypdf, python-docx, selectolax, ...) reading an untrusted file can take a lot of memory
and CPU, and the objects it builds cost the process garbage-collection passes that hold the GIL:
in the server, the event loop stalls while an upload is parsed. A ``ParsePool`` runs
``parsers.parse_file`` in worker processes instead:

- workers come from a forkserver (``multiprocessing``'s "forkserver" context: a fresh, single
  interpreter that imports the parsers once and forks a worker per request), never from a plain
  fork of the caller, which may run model threads. They start on first use, are reused, and at
  most ``ingest.parse_workers`` parse at once;
- each worker's address space is capped (``RLIMIT_AS`` = ``ingest.parse_memory_bytes``) and each
  parse has a wall-clock limit (``ingest.parse_timeout_s``);
- a parse over a limit, or a worker that dies, becomes a ``ParseError`` for that file (a reason for
  the user): the worker is killed and the next file gets a fresh one;
- the caller's stop check is polled while it waits, so a cancelled ingestion kills its parse at once
  (``IngestCancelled``).

The documents come back pickled: the same ``list[ParsedDocument]`` that ``parse_file`` returns.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from ragline.config import IngestSettings
from ragline.errors import IngestCancelled, ParseError
from ragline.ingest.parsers import ParseLimits, iter_jsonl, parse_file
from ragline.types import ParsedDocument

log = logging.getLogger("ragline.ingest")

#: Imported once by the forkserver, so a worker starts in milliseconds. Every worker also runs the
#: caller's main script as ``__mp_main__`` (multiprocessing does; a script must guard its entry point
#: with ``if __name__ == "__main__":``): for the ``ragline`` command that script imports
#: ``ragline.cli``, 150-300 ms per worker unless the forkserver has it already.
_PRELOAD = [
    "ragline.ingest.isolation",
    "ragline.cli",
    "pypdf",
    "selectolax.lexbor",
    "docx",
    "markdown_it",
]
#: How often a waiting caller checks its stop request and the deadline.
_POLL_S = 0.05

StopCheck = Callable[[], bool]


def _memory_reason(memory_bytes: int) -> str:
    return f"could not be parsed within the limits (ingest.parse_memory_bytes: {memory_bytes} bytes)"


# -- the worker ------------------------------------------------------------------------------------


def _vm_bytes() -> int:
    """This process's address space (what RLIMIT_AS caps)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _parse(path: str, doc_id: str, limits: ParseLimits, per_line: bool) -> list[Any]:
    if per_line:  # JSONL as the pipeline reads it: a bad line is reported, the others kept
        return [str(item) if isinstance(item, ParseError) else item for item in iter_jsonl(Path(path))]
    return list(parse_file(Path(path), doc_id, limits))


def _worker_main(conn: Connection, memory_bytes: int) -> None:
    """Serve parse requests on ``conn`` until it closes. A reply is ``(kind, payload, retire)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_bytes > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    start_vm = _vm_bytes()
    while True:
        try:
            path, doc_id, limits, per_line = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe (or died)
        reply: tuple[str, Any]
        try:
            reply = ("ok", _parse(path, doc_id, limits, per_line))
        except ParseError as e:
            reply = ("parse_error", str(e))
        except MemoryError:
            reply = ("memory", None)
        except OSError as e:  # the caller maps these to reasons as it does for an inline parse
            reply = ("os_error", OSError(e.errno, e.strerror))
        except Exception as e:  # a parser's bug on a strange file: that file fails, not the run
            log.warning("parser failed on %s: %r", Path(path).name, e)
            reply = ("failed", None)
        # A worker whose address space grew past half of its headroom is replaced: the next file
        # gets the whole cap, not what fragmentation left of it.
        retire = reply[0] == "memory" or (
            memory_bytes > 0 and _vm_bytes() > start_vm + (memory_bytes - start_vm) // 2
        )
        try:
            conn.send((*reply, retire))
        except MemoryError:  # pickling the documents did not fit under the cap
            reply, retire = ("memory", None), True
            conn.send((*reply, retire))
        except (BrokenPipeError, EOFError, OSError):
            return
        del reply
        if retire:
            return


# -- the pool ----------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    exitcode: int | None = None

    def discard(self) -> None:
        """Kill the worker (if it still runs) and release its pipe and sentinel."""
        try:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=2)
            self.exitcode = self.process.exitcode
        except (OSError, ValueError, AssertionError):
            pass
        self.conn.close()
        try:
            self.process.close()
        except ValueError:  # still running after the kill: left to the forkserver to reap
            log.warning("parser process %s did not exit after SIGKILL", self.process.pid)


class ParsePool:
    """At most ``workers`` parser processes, each under ``memory_bytes`` of address space (0 = no
    cap). Thread-safe: each caller gets a worker of its own for the duration of one parse."""

    def __init__(self, workers: int = 2, memory_bytes: int = 2 << 30) -> None:
        self.workers = workers
        self.memory_bytes = memory_bytes
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(_PRELOAD)  # only before the forkserver first starts
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._taken = 0  # workers handed out or being started
        self._cond = threading.Condition()
        self._closed = False

    # -- parsing -------------------------------------------------------------------------------

    def parse(
        self,
        path: Path,
        doc_id: str,
        limits: ParseLimits,
        *,
        timeout_s: float = 0,
        should_stop: StopCheck | None = None,
    ) -> list[ParsedDocument]:
        """``parse_file(path, doc_id, limits)`` in a worker. Raises ParseError (the file's reason,
        or a limit of the worker's), OSError (the file could not be read), IngestCancelled."""
        out = self._call(path, doc_id, limits, False, timeout_s, should_stop)
        return [d for d in out if isinstance(d, ParsedDocument)]

    def parse_lines(
        self, path: Path, *, timeout_s: float = 0, should_stop: StopCheck | None = None
    ) -> list[ParsedDocument | ParseError]:
        """A JSONL file as ``iter_jsonl`` reads it (a bad line is a ParseError in the list), in a worker."""
        out = self._call(path, "", ParseLimits(), True, timeout_s, should_stop)
        return [ParseError(d) if isinstance(d, str) else d for d in out]

    def _call(
        self,
        path: Path,
        doc_id: str,
        limits: ParseLimits,
        per_line: bool,
        timeout_s: float,
        should_stop: StopCheck | None,
    ) -> list[Any]:
        worker = self._acquire(should_stop)
        keep = False
        kind: str
        payload: Any
        try:
            worker.conn.send((str(path), doc_id, limits, per_line))
            deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
            while not wait([worker.conn, worker.process.sentinel], timeout=_POLL_S):
                if should_stop is not None and should_stop():
                    log.info("parse of %s stopped: the ingestion was cancelled", path.name)
                    raise IngestCancelled("ingestion cancelled")
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("parse of %s ran past %g s: the parser was killed", path.name, timeout_s)
                    raise ParseError(
                        f"could not be parsed within the limits (ingest.parse_timeout_s: {timeout_s:g} s)"
                    )
            reply: tuple[str, Any, bool] = ("died", None, True)
            try:
                if worker.conn.poll():
                    reply = worker.conn.recv()
            except (EOFError, OSError):
                pass  # the worker died: EOF on its pipe
            kind, payload, retire = reply
            keep = not retire
        except (BrokenPipeError, EOFError) as e:  # the worker was gone before it read the request
            log.warning("parser process for %s was gone: %r", path.name, e)
            kind, payload = "died", None
        finally:
            self._release(worker, keep)
        if kind == "ok":
            return list(payload)
        if kind == "parse_error":
            raise ParseError(str(payload))
        if kind == "os_error":
            raise payload
        if kind == "memory":
            log.warning(
                "parse of %s ran out of memory under the cap of %d bytes", path.name, self.memory_bytes
            )
            raise ParseError(_memory_reason(self.memory_bytes))
        if kind == "failed":
            raise ParseError("could not be parsed (the parser failed on this file; see the log)")
        log.warning("parser process for %s ended (exit code %s)", path.name, worker.exitcode)
        raise ParseError(
            "could not be parsed: the parser process ended unexpectedly (out of memory under "
            f"ingest.parse_memory_bytes: {self.memory_bytes} bytes, or a crash)"
        )

    # -- workers -------------------------------------------------------------------------------

    def _acquire(self, should_stop: StopCheck | None) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise ParseError("could not be parsed: the parser pool is closed")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.process.is_alive():
                        self._taken += 1
                        return worker
                    self._all.discard(worker)
                    worker.discard()
                if self._taken < self.workers:
                    self._taken += 1
                    break
                self._cond.wait(_POLL_S)
                if should_stop is not None and should_stop():
                    raise IngestCancelled("ingestion cancelled")
        try:
            worker = self._start()
        except BaseException as e:
            with self._cond:
                self._taken -= 1
                self._cond.notify()
            if isinstance(e, Exception):
                log.error("could not start a parser process", exc_info=e)
                raise ParseError(
                    "could not be parsed: no parser process could be started (see the log)"
                ) from e
            raise
        with self._cond:
            self._all.add(worker)
        return worker

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(child, self.memory_bytes), name="ragline-parser", daemon=True
        )
        try:
            process.start()
        finally:
            child.close()
        return _Worker(process, parent)

    def _release(self, worker: _Worker, keep: bool) -> None:
        with self._cond:
            self._taken -= 1
            if keep and not self._closed:
                self._idle.append(worker)
            else:
                self._all.discard(worker)
            self._cond.notify()
        if not keep or self._closed:
            worker.discard()

    def pids(self) -> list[int]:
        """The worker processes' ids (those running now)."""
        with self._cond:
            return [w.process.pid for w in self._all if w.process.pid is not None and w.process.is_alive()]

    def close(self) -> None:
        """Stop the idle workers; a busy one is stopped when its parse returns."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            for w in idle:
                self._all.discard(w)
        for w in idle:
            w.discard()


# -- one pool per process ------------------------------------------------------------------------------

_pools: dict[tuple[int, int], ParsePool] = {}
_pools_lock = threading.Lock()


def _forget_pools() -> None:  # a forked child must not talk to its parent's workers
    _pools.clear()


os.register_at_fork(after_in_child=_forget_pools)


def shared_pool(settings: IngestSettings) -> ParsePool:
    """This process's pool for these settings (``parse_workers``, ``parse_memory_bytes``), made on
    first use."""
    key = (settings.parse_workers, settings.parse_memory_bytes)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None or pool._closed:
            pool = _pools[key] = ParsePool(*key)
        return pool


def parse_file_isolated(
    path: Path,
    doc_id: str,
    limits: ParseLimits,
    settings: IngestSettings,
    should_stop: StopCheck | None = None,
) -> list[ParsedDocument]:
    """``parse_file`` in this process's parser pool, within ``settings``' limits."""
    return shared_pool(settings).parse(
        path, doc_id, limits, timeout_s=settings.parse_timeout_s, should_stop=should_stop
    )
