"""The OpenAI chat fields whose combination must make sense, checked in one place for every model.

Each field is honoured or refused with a 400 that names it (``param``), never dropped: OpenAI
and vLLM refuse these requests too, so a gateway upstream would, and the embedded model must.

- ``tool_choice`` without ``tools``; a ``tool_choice`` naming a function ``tools`` lacks;
  ``tools`` empty or not a list of ``{"type": "function", "function": {"name": ...}}``, or
  a function's ``parameters`` not a JSON Schema object
- ``response_format`` other than ``text``, ``json_object`` or ``json_schema``; a ``json_schema``
  without a schema, or with one that is not a JSON Schema (a type that does not exist, ...)
- ``top_logprobs`` without ``logprobs: true`` (its range, 0-20, is checked by the model)
- ``stream_options`` without ``stream: true`` (chat and legacy completions)

What only the embedded model cannot do is refused there (``gateway/local.py``, ``unsupported``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ragline.server.errors import BadRequest
from ragline.server.protocol import ChatCompletionRequest, CompletionRequest

RESPONSE_FORMATS = ("text", "json_object", "json_schema")
TOOL_CHOICES = ("none", "auto", "required")
JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
#: Keywords whose value is one schema, a list of schemas, or a map of names to schemas.
_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions")


def check_chat(req: ChatCompletionRequest) -> None:
    check_stream_options(req)
    _check_tools(req)
    _check_response_format(req.response_format)
    if req.top_logprobs is not None and not req.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")


def check_stream_options(req: ChatCompletionRequest | CompletionRequest) -> None:
    if req.stream_options is not None and not req.stream:
        raise BadRequest(
            "stream_options is only allowed when stream is true", param="stream_options", code="invalid_value"
        )


def _check_tools(req: ChatCompletionRequest) -> None:
    names: list[str] = []
    if req.tools is not None:
        if not req.tools:
            raise BadRequest("tools must hold at least one tool", param="tools", code="invalid_value")
        for i, tool in enumerate(req.tools):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if tool.get("type") != "function" or not isinstance(name, str) or not name:
                raise BadRequest(
                    f'tools[{i}] must be {{"type": "function", "function": {{"name": ...}}}}',
                    param=f"tools[{i}]",
                    code="invalid_value",
                )
            parameters = function.get("parameters") if isinstance(function, dict) else None
            if parameters is not None:
                problem = schema_problem(parameters)
                if problem is not None or not isinstance(parameters, dict):
                    raise BadRequest(
                        f"tools[{i}].function.parameters is no JSON Schema object: {problem or 'a boolean'}",
                        param=f"tools[{i}].function.parameters",
                        code="invalid_value",
                    )
            names.append(name)
    choice = req.tool_choice
    if choice is None:
        return
    if req.tools is None:
        raise BadRequest("tool_choice is only allowed when tools are given", param="tool_choice")
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise BadRequest(
                f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or a named function, not {choice!r}",
                param="tool_choice",
                code="invalid_value",
            )
        return
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise BadRequest(
            'a named tool_choice is {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
            code="invalid_value",
        )
    if name not in names:
        raise BadRequest(
            f"tool_choice names the function {name!r}, which tools does not define",
            param="tool_choice",
            code="invalid_value",
        )


def _check_response_format(fmt: Mapping[str, Any] | None) -> None:
    if fmt is None:
        return
    kind = fmt.get("type")
    if kind not in RESPONSE_FORMATS:
        raise BadRequest(
            f"response_format.type must be one of {', '.join(RESPONSE_FORMATS)}",
            param="response_format.type",
            code="invalid_value",
        )
    if kind != "json_schema":
        return
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise BadRequest(
            "a json_schema response_format needs response_format.json_schema.schema (a JSON Schema object)",
            param="response_format.json_schema.schema",
            code="invalid_value",
        )
    problem = schema_problem(schema)
    if problem is not None:
        raise BadRequest(
            f"response_format.json_schema.schema is not a valid JSON Schema: {problem}",
            param="response_format.json_schema.schema",
            code="invalid_value",
        )


def schema_problem(schema: Any, at: str = "#") -> str | None:
    """What makes ``schema`` no JSON Schema (the structure of the keywords that hold schemas and
    of ``type``, ``required`` and ``enum``), or None. Its depth is bounded by the request's checks."""
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f"{at} is not an object"
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        bad = [k for k in kinds if not isinstance(k, str) or k not in JSON_TYPES]
        if bad or not kinds:
            return f"{at}/type: {bad[0] if bad else kind!r} is not a JSON type"
    required = schema.get("required")
    if required is not None and not (
        isinstance(required, list) and all(isinstance(r, str) for r in required)
    ):
        return f"{at}/required is not a list of names"
    if "enum" in schema and not isinstance(schema["enum"], list):
        return f"{at}/enum is not a list"
    for key in _ONE:
        one = key in schema and not (key == "items" and isinstance(schema[key], list))
        if one and (problem := schema_problem(schema[key], f"{at}/{key}")) is not None:
            return problem
    for key in (*_MANY, "items"):
        if key in schema:
            value = schema[key]
            if key == "items" and not isinstance(value, list):
                continue
            if not isinstance(value, list):
                return f"{at}/{key} is not a list"
            for i, sub in enumerate(value):
                if (problem := schema_problem(sub, f"{at}/{key}/{i}")) is not None:
                    return problem
    for key in _MAP:
        if key in schema:
            value = schema[key]
            if not isinstance(value, dict):
                return f"{at}/{key} is not an object"
            for name, sub in value.items():
                if (problem := schema_problem(sub, f"{at}/{key}/{name}")) is not None:
                    return problem
    return None
