"""n choices streamed at once on the real llama.cpp model (``gateway.local.stream_choices``, behind
both ``ChatService.stream`` and a ``kind: local`` deployment): when the reader goes away, a
deadline passes or one choice fails, every generation still running stops at its next token
instead of running on to ``max_tokens``. (The stream's shape against a real server, with the
openai SDK: tests/test_chat_fields.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ragline.answer.llm import Completion, LlamaCppLLM, TokenCallback
from ragline.gateway.deployment import Timeouts
from ragline.gateway.errors import UpstreamStatusError, UpstreamTimeout
from ragline.gateway.local import LocalDeployment, stream_choices

STORY = [{"role": "user", "content": "Write a very long story about a dragon, at least 2000 words."}]
LONG = 2000  # tokens: a minute or more on this machine, had the generation not been stopped


class Watched:
    """Runs the model calls in threads and keeps what each returned, also after nobody awaits it."""

    def __init__(self, n: int) -> None:
        self.completions: list[Completion] = []
        self.all_done = threading.Event()
        self._n = n
        self._lock = threading.Lock()

    async def run_in_thread(self, fn: Callable[[], Completion]) -> Completion:
        def watched() -> Completion:
            c = fn()
            with self._lock:
                self.completions.append(c)
                if len(self.completions) == self._n:
                    self.all_done.set()
            return c

        return await asyncio.to_thread(watched)

    def assert_stopped(self, n: int) -> None:
        assert self.all_done.wait(15), "an abandoned generation kept running"
        assert len(self.completions) == n
        assert all(c.finish_reason == "cancelled" for c in self.completions), self.completions
        assert all(c.completion_tokens < LONG // 4 for c in self.completions), self.completions


def _deployment(llm: LlamaCppLLM, watched: Watched, timeouts: Timeouts | None = None) -> LocalDeployment:
    return LocalDeployment(
        "loc",
        lambda: llm,
        run_in_thread=watched.run_in_thread,
        n_ctx=4096,
        n_parallel=2,
        **({"timeouts": timeouts} if timeouts else {}),
    )


def test_a_reader_that_goes_away_stops_every_choice(llm: LlamaCppLLM) -> None:
    watched = Watched(2)
    deployment = _deployment(llm, watched)
    body: dict[str, Any] = {"messages": STORY, "max_tokens": LONG, "n": 2, "temperature": 0.7, "seed": 3}

    async def read_a_little() -> set[int]:
        seen: set[int] = set()
        async with contextlib.aclosing(deployment.stream(body, budget=120)) as chunks:
            async for chunk in chunks:
                seen.update(c["index"] for c in chunk["choices"] if c["delta"].get("content"))
                if seen == {0, 1}:
                    break  # the client disconnects: the server closes the stream
        return seen

    assert asyncio.run(read_a_little()) == {0, 1}  # both choices were generating at once
    watched.assert_stopped(2)


def test_a_deadline_stops_every_choice(llm: LlamaCppLLM) -> None:
    watched = Watched(2)
    deployment = _deployment(llm, watched, Timeouts(total=1.5))
    body: dict[str, Any] = {"messages": STORY, "max_tokens": LONG, "n": 2}

    async def read_all() -> None:
        async with contextlib.aclosing(deployment.stream(body, budget=120)) as chunks:
            async for _ in chunks:
                pass

    with pytest.raises(UpstreamTimeout):
        asyncio.run(read_all())
    watched.assert_stopped(2)


def test_a_failed_choice_stops_the_others(llm: LlamaCppLLM) -> None:
    """Fault injection: choice 1 fails once choice 0 is generating; the stream raises its error
    and choice 0, on the real model, stops."""
    watched = Watched(1)

    async def read_all() -> None:
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        async def run(i: int, on_token: TokenCallback) -> Completion:
            if i == 1:
                await started.wait()
                raise UpstreamStatusError("loc", 400, {"message": "injected", "param": "n"})

            def first(piece: str) -> bool:
                loop.call_soon_threadsafe(started.set)
                return bool(on_token(piece))

            return await watched.run_in_thread(
                lambda: llm.chat(STORY, max_tokens=LONG, temperature=0.0, on_token=first)
            )

        done: list[Completion] = []
        async with contextlib.aclosing(stream_choices(2, run, calling=False, done=done)) as choices:
            async for _ in choices:
                pass

    with pytest.raises(UpstreamStatusError) as failed:
        asyncio.run(read_all())
    assert failed.value.status == 400 and failed.value.message == "injected"
    watched.assert_stopped(1)
