"""Tool calls on the embedded model, through llama.cpp's grammar (OpenAI's ``tools``/``tool_choice``).

The small models ragline embeds have no tool-calling chat template, so a tool call is asked for
the way llama.cpp's generic format does it: the tools are listed in a system message, and the
answer is constrained (a JSON Schema turned into a grammar) to one JSON object,
``{"tool_call": {"name": ..., "arguments": {...}}}`` with arguments matching that tool's
``parameters``, or (``tool_choice: "auto"`` only) ``{"content": "..."}``.

- ``auto``: a call to any tool or a text answer; ``required``: a call to one of the tools;
  a named function: a call to it; ``none``: a plain answer (the tools are not offered).
- Streamed, the answer is read as it is generated (``ToolStream``): the call's id and name go out
  once the name is complete, then its arguments' JSON in fragments as the model writes them;
  a text answer goes out as its decoded content, piece by piece.
- Earlier turns render in the same format: an assistant message's ``tool_calls`` as the JSON
  it would have produced, a ``tool`` message as the tool's result.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: A tool without ``parameters`` takes any arguments object.
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(slots=True, frozen=True)
class ToolCalling:
    """What a request with tools asks of the model: the system message, the answer's schema."""

    system: str
    schema: dict[str, Any]

    @property
    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": self.schema}}


def plan(tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any) -> ToolCalling | None:
    """The tool calling a request asks for, or None (no tools, or ``tool_choice: "none"``).
    ``tools`` and ``tool_choice`` are already checked (``server/chat_checks.py``)."""
    if not tools or tool_choice == "none":
        return None
    functions = [dict(t["function"]) for t in tools]
    if isinstance(tool_choice, Mapping):
        name = tool_choice["function"]["name"]
        functions = [f for f in functions if f["name"] == name]
    calls = [_call_schema(f) for f in functions]
    text = {
        "type": "object",
        "properties": {"content": {"type": "string"}},
        "required": ["content"],
        "additionalProperties": False,
    }
    auto = tool_choice in (None, "auto")
    options = [*calls, text] if auto else calls
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    listing = "\n".join(
        json.dumps({k: f[k] for k in ("name", "description", "parameters") if k in f}, ensure_ascii=False)
        for f in functions
    )
    how = 'To call a tool, answer {"tool_call": {"name": <tool name>, "arguments": <its arguments>}}; ' + (
        'otherwise answer {"content": <your answer>}.' if auto else "you must call one."
    )
    return ToolCalling(f"You can call these tools (JSON):\n{listing}\n{how}", schema)


def _call_schema(function: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "tool_call": {
                "type": "object",
                "properties": {
                    "name": {"const": function["name"]},
                    "arguments": function.get("parameters") or _ANY_OBJECT,
                },
                "required": ["name", "arguments"],
            }
        },
        "required": ["tool_call"],
        "additionalProperties": False,
    }


def with_system(messages: list[dict[str, str]], system: str) -> list[dict[str, str]]:
    """The prompt with the tools' system message (joined to a leading system message)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + system}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def render(role: str, text: str, tool_calls: Any) -> dict[str, str]:
    """One earlier message for the prompt: an assistant's tool calls as the JSON it answers in."""
    role = "system" if role == "developer" else role
    if role == "assistant" and isinstance(tool_calls, list) and tool_calls:
        parts = [text] if text else []
        for call in tool_calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                try:
                    arguments = json.loads(function.get("arguments") or "{}")
                except ValueError:
                    arguments = function.get("arguments")
                parts.append(
                    json.dumps({"tool_call": {"name": function.get("name"), "arguments": arguments}})
                )
        return {"role": role, "content": "\n".join(parts)}
    return {"role": role, "content": text}


@dataclass(slots=True, frozen=True)
class Reply:
    """The model's answer read back: text content, or tool calls (OpenAI's ``tool_calls``)."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None

    def message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        return out


def read(text: str) -> Reply:
    """The JSON the grammar allowed, as content or a tool call; text that is not that JSON (the
    answer was cut at ``max_tokens``) is returned as content."""
    try:
        value = json.loads(text)
    except ValueError:
        return Reply(text, None)
    if isinstance(value, dict) and isinstance(call := value.get("tool_call"), dict):
        arguments = json.dumps(call.get("arguments", {}), ensure_ascii=False)
        tool_call = {
            "id": call_id(),
            "type": "function",
            "function": {"name": str(call.get("name")), "arguments": arguments},
        }
        return Reply(None, [tool_call])
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return Reply(value["content"], None)
    return Reply(text, None)


def finish_reason(reply: Reply, model_reason: str) -> str:
    return "tool_calls" if reply.tool_calls else model_reason


def call_deltas(tool_calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Complete tool calls as stream deltas: each call's id and name, then its arguments."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(tool_calls):
        function = call["function"]
        head = {"name": function["name"], "arguments": ""}
        deltas.append(
            {"tool_calls": [{"index": index, "id": call["id"], "type": "function", "function": head}]}
        )
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": function["arguments"]}}]})
    return deltas


def call_id() -> str:
    """A tool call's id, in OpenAI's shape (``call_`` and 24 hex digits)."""
    return "call_" + uuid.uuid4().hex[:24]


_WHITESPACE = frozenset(" \t\n\r")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_SCALAR = frozenset("0123456789+-.eEtrufalsn")
_REPLACEMENT = "\ufffd"


class ToolStream:
    """Reads a streamed answer of the tools' grammar as it is generated, into stream deltas.

    A small JSON scanner over the generated text (strings and their escapes, nesting): once the
    call's ``name`` is complete the first tool-call delta goes out (id, type, name, empty
    arguments), then the raw text of the ``arguments`` value in fragments as it comes (joined,
    they are exactly the arguments' JSON); a ``{"content": ...}`` answer goes out as its decoded
    text, piece by piece. ``feed`` takes each generated piece, ``end`` the model's finish reason.
    What was sent is never contradicted: text cut short (``max_tokens``) ends the stream with the
    model's finish reason and nothing more, and text that never became a call or content is
    sent as content at the end, as ``read`` would return it.
    """

    def __init__(self) -> None:
        self.call_id = call_id()
        self._text: list[str] = []
        #: Open containers: [is_object, the current key (objects)].
        self._frames: list[list[Any]] = []
        #: What comes next outside a string: value, value_or_close, key, key_or_close, colon, comma, end.
        self._expect = "value"
        self._in_string = False
        self._string_is_key = False
        self._string_is_content = False
        self._escape = ""  # "", "\\" after a backslash, "\\uXX.." while reading \uXXXX
        self._high: int | None = None  # a high surrogate waiting for its low half
        self._chars: list[str] = []  # the current string, decoded
        self._in_scalar = False
        self._broken = False  # not JSON: stop reading
        self._args_depth: int | None = None  # reading the arguments: the depth they started at
        self._args_done = False
        self._name: str | None = None
        self._head_sent = False
        self._content = False  # the answer is text: a ``content`` string was begun
        self._out_args: list[str] = []  # arguments read and not yet sent
        self._out_content: list[str] = []

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The deltas one generated piece completes (often none)."""
        self._text.append(text)
        for c in text:
            if self._broken:
                break
            self._char(c)
        return self._flush()

    def end(self, model_reason: str) -> tuple[list[dict[str, Any]], str]:
        """The last deltas and the finish reason: ``tool_calls`` once the call's arguments are
        complete, otherwise the model's (``length`` for text cut at ``max_tokens``)."""
        if self._in_scalar and not self._broken:
            self._in_scalar = False
            self._value_done()
        deltas = self._flush()
        if self._head_sent:
            return deltas, "tool_calls" if self._args_done else model_reason
        if not self._content:  # neither a call nor content: the text as it came
            text = "".join(self._text)
            if text:
                deltas.append({"content": text})
        return deltas, model_reason

    # -- deltas ---------------------------------------------------------------------------------

    def _flush(self) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if self._out_content:
            deltas.append({"content": "".join(self._out_content)})
            self._out_content.clear()
        if self._name is not None and not self._head_sent:
            head = {"index": 0, "id": self.call_id, "type": "function"}
            deltas.append({"tool_calls": [{**head, "function": {"name": self._name, "arguments": ""}}]})
            self._head_sent = True
        if self._head_sent and self._out_args:
            fragment = "".join(self._out_args)
            self._out_args.clear()
            deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
        return deltas

    def _keys(self) -> tuple[Any, ...]:
        """Where the value being read sits: the keys (None in an array) from the top."""
        return tuple(frame[1] for frame in self._frames)

    # -- the scanner ----------------------------------------------------------------------------

    def _char(self, c: str) -> None:
        if self._in_scalar and c not in _SCALAR:
            self._in_scalar = False
            self._value_done()  # a number or literal ends at the character after it
        if self._args_depth is not None:
            self._out_args.append(c)
        if self._in_string:
            self._string_char(c)
        elif not self._in_scalar and c not in _WHITESPACE:
            self._structure(c)

    def _structure(self, c: str) -> None:
        expect = self._expect
        closer = ("}" if self._frames[-1][0] else "]") if self._frames else None
        if c == closer and expect in ("comma", "key_or_close" if c == "}" else "value_or_close"):
            self._close()
        elif expect in ("value", "value_or_close"):
            self._value_start(c)
        elif expect in ("key", "key_or_close") and c == '"':
            self._in_string, self._string_is_key, self._string_is_content = True, True, False
        elif expect == "colon" and c == ":":
            self._expect = "value"
        elif expect == "comma" and c == ",":
            self._expect = "key" if self._frames[-1][0] else "value"
        else:
            self._broken = True

    def _value_start(self, c: str) -> None:
        keys = self._keys()
        if keys == ("tool_call", "arguments") and self._args_depth is None and not self._args_done:
            self._args_depth = len(self._frames)
            self._out_args.append(c)
        if c in "{[":
            self._frames.append([c == "{", None])
            self._expect = "key_or_close" if c == "{" else "value_or_close"
        elif c == '"':
            self._in_string, self._string_is_key = True, False
            self._string_is_content = keys == ("content",) and self._name is None and not self._content
            self._content = self._content or self._string_is_content
        elif c in _SCALAR:
            self._in_scalar = True
        else:
            self._broken = True

    def _close(self) -> None:
        self._frames.pop()
        self._value_done()

    def _value_done(self) -> None:
        if self._args_depth is not None and len(self._frames) == self._args_depth:
            self._args_depth, self._args_done = None, True
        self._expect = "comma" if self._frames else "end"

    def _string_char(self, c: str) -> None:
        if self._escape == "":
            if c == "\\":
                self._escape = c
            elif c == '"':
                self._string_end()
            else:
                self._decoded(c)
        elif self._escape == "\\":
            if c == "u":
                self._escape = "\\u"
            elif c in _ESCAPES:
                self._escape = ""
                self._decoded(_ESCAPES[c])
            else:
                self._broken = True
        else:
            self._escape += c
            if len(self._escape) == 6:
                try:
                    code = int(self._escape[2:], 16)
                except ValueError:
                    self._broken = True
                    return
                self._escape = ""
                self._code_point(code)

    def _code_point(self, code: int) -> None:
        if 0xD800 <= code < 0xDC00:  # the high half of a surrogate pair: wait for the low half
            self._decoded("")
            self._high = code
        elif 0xDC00 <= code < 0xE000:
            high, self._high = self._high, None
            pair = 0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00) if high is not None else None
            self._decoded(_REPLACEMENT if pair is None else chr(pair))
        else:
            self._decoded(chr(code))

    def _decoded(self, text: str) -> None:
        if self._high is not None:  # a high surrogate with no low half
            self._high = None
            text = _REPLACEMENT + text
        if not text:
            return
        self._chars.append(text)
        if self._string_is_content:
            self._out_content.append(text)

    def _string_end(self) -> None:
        self._decoded("")
        value = "".join(self._chars)
        self._chars.clear()
        self._in_string = False
        if self._string_is_key:
            self._frames[-1][1] = value
            self._expect = "colon"
            return
        if self._keys() == ("tool_call", "name") and self._name is None and not self._content:
            self._name = value
        self._value_done()
