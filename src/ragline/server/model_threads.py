"""Worker threads for blocking LLM calls, bounded by the model's parallel slots.

llama.cpp serves ``llm.n_parallel`` requests at once; more threads than that only
wait inside llama.cpp. So requests beyond the slots wait here as cheap asyncio
futures, and the loop's default executor stays free for short calls (listing
collections, search, uploads) however many generations are running.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar
from weakref import WeakKeyDictionary

from ragline.engine import Engine

P = ParamSpec("P")
R = TypeVar("R")

_pools: WeakKeyDictionary[Engine, ThreadPoolExecutor] = WeakKeyDictionary()
_lock = threading.Lock()


def _pool(engine: Engine) -> ThreadPoolExecutor:
    pool = _pools.get(engine)
    if pool is None:
        with _lock:
            pool = _pools.get(engine)
            if pool is None:
                # two per slot: when a slot frees up, the next request is already queued in llama.cpp
                workers = 2 * engine.settings.llm.n_parallel
                pool = _pools[engine] = ThreadPoolExecutor(workers, thread_name_prefix="llm")
    return pool


async def run_model(engine: Engine, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a blocking model call on the engine's LLM threads (with the caller's context variables)."""
    ctx = contextvars.copy_context()
    call = functools.partial(ctx.run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool(engine), call)


def shutdown(engine: Engine) -> None:
    with _lock:
        pool = _pools.pop(engine, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
