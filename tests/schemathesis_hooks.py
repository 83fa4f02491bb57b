"""Schemathesis hooks for the API fuzz run in test_server_extra.py (loaded via SCHEMATHESIS_HOOKS).

Random model names only ever reach the 404 branch. Half of the generated bodies get
a model the server really serves, so the fuzzer reaches the code behind it (the
local LLM, the embedding batcher); explicit generation lengths are clamped (the
server under test has a small default) so that no request legitimately runs for minutes.
"""

from __future__ import annotations

import random
from typing import Any

import schemathesis

MAX_FUZZ_TOKENS = 4
_MODELS = {
    "/v1/chat/completions": "local",
    "/v1/async/chat/completions": "local",
    "/v1/completions": "local",
    "/v1/embeddings": "all-MiniLM-L6-v2",
}


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    model = _MODELS.get(case.operation.path)
    if model is not None and random.Random(repr(sorted(body.items(), key=str))).random() < 0.5:
        body["model"] = model
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_FUZZ_TOKENS:
            body[key] = MAX_FUZZ_TOKENS
