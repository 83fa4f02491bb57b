"""Stopping a local generation whose reader went away (client disconnect, timeout).

The real llama.cpp model generates; ``TokenBridge`` carries its tokens to the event loop as the
server's streaming paths do, and ``cancel()`` must stop the generation at the next token instead
of letting it run on to ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import time

from ragline.answer.llm import Completion, LlamaCppLLM
from ragline.answer.tokens import DONE, TokenBridge

PROMPT = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]


def test_on_token_returning_true_stops_generation(llm: LlamaCppLLM) -> None:
    seen: list[str] = []

    def on_token(tok: str) -> bool:
        seen.append(tok)
        return len(seen) >= 3

    full = llm.chat(PROMPT, max_tokens=120, temperature=0.0, seed=1)
    assert full.completion_tokens >= 60  # premise: without a stop the model writes on
    cut = llm.chat(PROMPT, max_tokens=120, temperature=0.0, seed=1, on_token=on_token)
    assert len(seen) == 3 and cut.finish_reason == "cancelled"
    assert cut.text == "".join(seen) and cut.completion_tokens <= 4


async def test_bridge_cancel_stops_the_model_thread(llm: LlamaCppLLM) -> None:
    loop = asyncio.get_running_loop()
    bridge = TokenBridge(loop)

    def generate() -> Completion:
        try:
            return llm.chat(PROMPT, max_tokens=200, temperature=0.0, seed=1, on_token=bridge.on_token)
        finally:
            bridge.finish()

    future = loop.run_in_executor(None, generate)
    got = [await bridge.get(), await bridge.get()]
    assert all(isinstance(t, str) for t in got)
    bridge.cancel()  # what the server does when the client goes away
    t0 = time.perf_counter()
    completion = await asyncio.wait_for(future, timeout=30)
    assert completion.finish_reason == "cancelled"
    assert completion.completion_tokens < 20, completion
    assert time.perf_counter() - t0 < 5  # 200 tokens would take several seconds on one thread
    items = []
    while (item := await bridge.get()) is not DONE:
        items.append(item)
    assert len(items) <= 2  # at most what was already queued when cancel() came
