"""JSON on the gateway's hot path: orjson, with the standard library where orjson refuses.

orjson encodes and decodes a chat body several times faster than ``json``. It refuses a few
things ``json`` takes: integers beyond 64 bits (encoding) and ``NaN``/``Infinity`` literals
(decoding); those rare bodies go through ``json`` so behaviour does not change. What neither
should take stays refused: nesting deeper than orjson's limit (``json`` would hit Python's
recursion limit) and unpaired surrogates (``\\ud800`` escapes: no UTF-8 encoder or model takes
them), both as ``ValueError``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

#: Containers nested deeper than this are refused (orjson encodes at most 254 levels).
MAX_DEPTH = 128


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # e.g. an integer beyond 64 bits
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes | str) -> Any:
    """Parse JSON; ``ValueError`` when it is not JSON (or not JSON that can be sent on)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if "depth" in str(e):  # orjson's nesting limit: json would only fail later, with a RecursionError
            raise
        try:
            value = json.loads(data)  # NaN / Infinity literals, which json accepts
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
    problem = check_text(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def check_text(value: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """What makes a decoded JSON value unfit to pass on (an unpaired surrogate, too deep), or None.

    Iterative, so arbitrarily deep input cannot exhaust the stack.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return "text must be valid Unicode (no unpaired surrogates)"
        elif isinstance(v, dict | list):
            if depth >= max_depth:
                return f"JSON nested deeper than {max_depth} levels"
            if isinstance(v, dict):
                stack.extend((k, depth + 1) for k in v)
                stack.extend((x, depth + 1) for x in v.values())
            else:
                stack.extend((x, depth + 1) for x in v)
    return None
