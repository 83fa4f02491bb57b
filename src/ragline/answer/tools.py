"""Tool calls on the embedded model, through llama.cpp's grammar (OpenAI's ``tools``/``tool_choice``).

The small models ragline embeds have no tool-calling chat template, so a tool call is asked for
the way llama.cpp's generic format does it: the tools are listed in a system message, and the
answer is constrained (a JSON Schema turned into a grammar) to one JSON object,
``{"tool_call": {"name": ..., "arguments": {...}}}`` with arguments matching that tool's
``parameters``, or (``tool_choice: "auto"`` only) ``{"content": "..."}``.

- ``auto``: a call to any tool or a text answer; ``required``: a call to one of the tools;
  a named function: a call to it; ``none``: a plain answer (the tools are not offered).
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
            "id": "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": str(call.get("name")), "arguments": arguments},
        }
        return Reply(None, [tool_call])
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return Reply(value["content"], None)
    return Reply(text, None)


def finish_reason(reply: Reply, model_reason: str) -> str:
    return "tool_calls" if reply.tool_calls else model_reason


def stream_deltas(reply: Reply, fragment_chars: int = 8) -> list[dict[str, Any]]:
    """The reply as stream deltas: a tool call's id and name first, then its arguments in
    fragments (joined, they are the arguments' JSON); content in one delta."""
    if not reply.tool_calls:
        return [{"content": reply.content or ""}]
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(reply.tool_calls):
        function = call["function"]
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": function["name"], "arguments": ""},
                    }
                ]
            }
        )
        arguments = function["arguments"]
        for start in range(0, len(arguments), fragment_chars):
            fragment = arguments[start : start + fragment_chars]
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    return deltas


def stream_end(text: str, model_reason: str) -> tuple[list[dict[str, Any]], str]:
    """The end of a stream whose model was made to call a tool: the call's deltas, and the finish
    reason (``tool_calls`` when the text was a call)."""
    reply = read(text)
    return stream_deltas(reply), finish_reason(reply, model_reason)
