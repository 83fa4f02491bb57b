"""The incremental reader of the tools' grammar (``answer.tools.ToolStream``): deltas as the
model generates, whatever the pieces' boundaries."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from ragline.answer import tools

ARGS = '{"city": "Os\\"lo {x} [y]", "days": [1, 2, {"deep": {"a": null}}], "t": -1.5e3, "ok": true}'
CALL = '{"tool_call": {"name": "weather", "arguments": ' + ARGS + "}}"
SPACED = '{ "tool_call" :\n {\n  "name" : "weather" ,\n  "arguments" :  ' + ARGS + " \n } \n}"
CONTENT = '{"content": "h\\u00e9llo \\ud83d\\ude00 \\"q\\" \\\\ \\n {not json} \\/ end"}'


def _feed(text: str, sizes: list[int], reason: str = "stop") -> tuple[list[list[dict[str, Any]]], str]:
    """The deltas of each piece (the last entry: end's), and the finish reason."""
    reader = tools.ToolStream()
    out, at = [], 0
    for size in sizes:
        out.append(reader.feed(text[at : at + size]))
        at += size
    assert at >= len(text)
    deltas, finish = reader.end(reason)
    return [*out, deltas], finish


def _splits(text: str, seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes: list[int] = []
    while sum(sizes) < len(text):
        sizes.append(rng.randint(1, 7))
    return sizes


def _call(per_piece: list[list[dict[str, Any]]]) -> tuple[dict[str, Any], list[str]]:
    """The first tool-call delta and the argument fragments that follow it."""
    deltas = [d for piece in per_piece for d in piece]
    assert all(set(d) == {"tool_calls"} for d in deltas), deltas
    head, *rest = [d["tool_calls"][0] for d in deltas]
    assert all(t["index"] == 0 and set(t) == {"index", "function"} for t in rest)
    return head, [t["function"]["arguments"] for t in rest]


@pytest.mark.parametrize("text", [CALL, SPACED], ids=["compact", "whitespace"])
def test_a_call_fed_one_character_at_a_time_streams_its_arguments(text: str) -> None:
    per_piece, finish = _feed(text, [1] * len(text))
    head, fragments = _call(per_piece)
    assert finish == "tool_calls"
    assert head["index"] == 0 and head["type"] == "function"
    assert head["id"].startswith("call_") and len(head["id"]) == len("call_") + 24
    assert head["function"] == {"name": "weather", "arguments": ""}
    assert "".join(fragments) == ARGS  # exactly the arguments' text, not the envelope's braces
    assert json.loads("".join(fragments))["city"] == 'Os"lo {x} [y]'
    assert len(fragments) == len(ARGS)  # one fragment per character: streamed as generated
    # the name goes out once it is complete, before any of the arguments is generated
    name_done = text.index('"weather"') + len('"weather"')
    first = next(i for i, piece in enumerate(per_piece) if piece)
    assert first == name_done - 1


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("text", [CALL, SPACED], ids=["compact", "whitespace"])
def test_a_call_in_random_pieces_joins_to_its_arguments(text: str, seed: int) -> None:
    per_piece, finish = _feed(text, _splits(text, seed))
    head, fragments = _call(per_piece)
    assert finish == "tool_calls" and head["function"]["name"] == "weather"
    assert "".join(fragments) == ARGS and all(fragments)


@pytest.mark.parametrize("seed", [None, *range(20)])
def test_content_is_decoded_piece_by_piece(seed: int | None) -> None:
    sizes = [1] * len(CONTENT) if seed is None else _splits(CONTENT, seed)
    per_piece, finish = _feed(CONTENT, sizes)
    deltas = [d for piece in per_piece for d in piece]
    assert finish == "stop"
    assert all(set(d) == {"content"} and d["content"] for d in deltas)
    assert "".join(d["content"] for d in deltas) == json.loads(CONTENT)["content"]
    if seed is None:
        assert len(deltas) > 10


def test_escapes_split_across_pieces() -> None:
    text = '{"content": "a\\u00e9\\ud83d\\ude00\\n"}'
    cuts = [13, 3, 4, 5, 4, 6, 1, 2]  # inside the \\u escapes and between a surrogate's halves
    per_piece, _ = _feed(text, cuts)
    assert "".join(d["content"] for piece in per_piece for d in piece) == "aé😀\n"


def test_a_lone_surrogate_becomes_the_replacement_character() -> None:
    per_piece, _ = _feed('{"content": "\\ud83dx"}', [40])
    assert per_piece[0] == [{"content": "\ufffdx"}]


def test_a_call_cut_in_its_arguments_ends_with_length_and_nothing_contradicting() -> None:
    cut = CALL[: CALL.index("days")]
    per_piece, finish = _feed(cut, [1] * len(cut), reason="length")
    head, fragments = _call(per_piece)
    assert finish == "length" and head["function"]["name"] == "weather"
    assert ARGS.startswith("".join(fragments)) and per_piece[-1] == []


def test_a_call_cut_in_its_closing_braces_is_still_a_call() -> None:
    cut = CALL[:-1]
    per_piece, finish = _feed(cut, [5] * len(cut), reason="length")
    assert finish == "tool_calls" and "".join(_call(per_piece)[1]) == ARGS


def test_text_cut_before_a_name_is_sent_as_content_at_the_end() -> None:
    cut = '{"tool_call": {"na'
    per_piece, finish = _feed(cut, [1] * len(cut), reason="length")
    assert finish == "length"
    assert all(piece == [] for piece in per_piece[:-1]) and per_piece[-1] == [{"content": cut}]
    assert tools.read(cut).content == cut  # as the non-streamed answer reads it


def test_content_cut_short_keeps_what_was_sent() -> None:
    cut = CONTENT[:30]
    per_piece, finish = _feed(cut, [3] * 10, reason="length")
    assert finish == "length" and per_piece[-1] == []
    sent = "".join(d["content"] for piece in per_piece for d in piece)
    assert json.loads(CONTENT)["content"].startswith(sent) and sent


def test_text_that_is_not_json_is_content() -> None:
    per_piece, finish = _feed("plain words", [4, 4, 4], reason="length")
    assert finish == "length" and per_piece[-1] == [{"content": "plain words"}]
    assert all(piece == [] for piece in per_piece[:-1])


def test_empty_content_and_empty_arguments() -> None:
    assert _feed('{"content": ""}', [15]) == ([[], []], "stop")
    per_piece, finish = _feed('{"tool_call": {"name": "f", "arguments": {}}}', [1] * 45)
    assert finish == "tool_calls" and _call(per_piece)[1] == ["{", "}"]


def test_the_streamed_call_id_has_the_shape_of_the_non_streamed_one() -> None:
    reply = tools.read(CALL)
    assert reply.tool_calls is not None
    streamed = _call(_feed(CALL, [len(CALL)])[0])[0]["id"]
    assert len(reply.tool_calls[0]["id"]) == len(streamed) and reply.tool_calls[0]["id"][:5] == "call_"
    assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == json.loads(ARGS)
