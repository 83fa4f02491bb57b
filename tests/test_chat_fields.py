"""OpenAI's chat fields, each honoured or refused with a 400 naming it, never dropped: driven by
the official openai SDK against one real `ragline serve` (the embedded model as ``local`` and
as the gateway model ``embedded``; the gateway model ``echo`` on a fake upstream,
tests/fault_upstream.py, which records the body it was sent)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from conftest import free_port, ragline_server

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
MSG = [{"role": "user", "content": "Say hi."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
PERSON = [{"role": "user", "content": "Give a person with a name and an age as JSON."}]
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


class Env:
    def __init__(self, base: str, fault: str) -> None:
        self.base = base
        self.fault = fault

    def stats(self, instance: str) -> dict[str, Any]:
        got = httpx.get(self.fault + "/admin/stats").json().get(instance)
        return dict(got or {"requests": 0, "last_body": None})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("chat-fields")
    port = free_port()
    fault = f"http://{HOST}:{port}"
    config = {
        "llm": {"n_parallel": 2, "max_tokens": 16, "threads": 1},
        "gateway": {
            "deployments": [
                {"name": "echo", "base_url": f"{fault}/echo/v1", "model": "up-echo", "health_check": False},
                {"name": "emb", "kind": "local", "model": "embedded-local"},
            ],
            "models": {"echo": {"deployments": ["echo"]}, "embedded": {"deployments": ["emb"]}},
        },
    }
    (tmp / "ragline.yaml").write_text(yaml.safe_dump(config))
    log = (tmp / "fault.log").open("w")
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "fault_upstream.py"), "--port", str(port)], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(fault + "/admin/stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or upstream.poll() is not None:
                    pytest.fail("the fake upstream did not start")
                time.sleep(0.1)
        with ragline_server(tmp / "data", {"RAGLINE_CONFIG": str(tmp / "ragline.yaml")}) as base:
            yield Env(base, fault)
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
        log.close()


@pytest.fixture
def client(env: Env) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.base + "/v1", api_key="unused", max_retries=0, timeout=120)


def _refused(call: Callable[[], Any], param: str) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as e:
        out = call()
        list(out)  # a stream: its 400 comes before the first chunk
    body = e.value.body
    assert isinstance(body, dict) and body.get("param") == param, body
    assert body.get("type") == "invalid_request_error" and body.get("message")
    return e.value


# -- validation in one place: every model, streamed or not -----------------------------------------

BAD: list[tuple[str, dict[str, Any]]] = [
    ("tool_choice", {"tool_choice": "auto"}),
    ("tool_choice", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    ("tool_choice", {"tools": TOOLS, "tool_choice": "sometimes"}),
    ("tools", {"tools": []}),
    ("tools[0]", {"tools": [{"type": "function", "function": {}}]}),
    (
        "tools[0].function.parameters",
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}]},
    ),
    (
        "response_format.json_schema.schema",
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
    ),
    (
        "response_format.json_schema.schema",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "bogus"}},
            }
        },
    ),
    (
        "response_format.json_schema.schema",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": 3}}},
            }
        },
    ),
    ("response_format.type", {"response_format": {"type": "yaml"}}),
    ("top_logprobs", {"logprobs": True, "top_logprobs": 30}),
    ("top_logprobs", {"logprobs": True, "top_logprobs": -1}),
    ("top_logprobs", {"top_logprobs": 2}),
]


@pytest.mark.parametrize("model", ["local", "echo", "embedded", "rag/none"])
@pytest.mark.parametrize(("param", "fields"), BAD)
@pytest.mark.parametrize("stream", [False, True])
def test_inconsistent_fields_are_400_naming_the_field(
    env: Env, client: openai.OpenAI, model: str, param: str, fields: dict[str, Any], stream: bool
) -> None:
    before = env.stats("echo")["requests"]
    _refused(
        lambda: client.chat.completions.create(model=model, messages=MSG, stream=stream, extra_body=fields),  # type: ignore[call-overload]
        param,
    )
    assert env.stats("echo")["requests"] == before  # refused before any upstream saw it


@pytest.mark.parametrize("model", ["local", "echo", "embedded"])
def test_stream_options_without_stream_is_400(env: Env, client: openai.OpenAI, model: str) -> None:
    _refused(
        lambda: client.chat.completions.create(
            model=model, messages=MSG, stream_options={"include_usage": True}
        ),  # type: ignore[call-overload]
        "stream_options",
    )
    _refused(
        lambda: client.completions.create(model="local", prompt="Hi", stream_options={"include_usage": True}),
        "stream_options",
    )


def test_fast_path_requests_are_validated_too(env: Env) -> None:
    """A raw JSON body for a gateway model (the fast path's) gets the same 400."""
    r = httpx.post(
        env.base + "/v1/chat/completions",
        json={"model": "echo", "messages": MSG, "tool_choice": "auto"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice", r.text


# -- gateway models: the fields go to the upstream unchanged -----------------------------------------


def test_gateway_upstream_receives_the_fields_unchanged(env: Env, client: openai.OpenAI) -> None:
    fields: dict[str, Any] = {
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "p", "schema": SCHEMA, "strict": True},
        },
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 3,
        "parallel_tool_calls": False,
    }
    fresh = {"Cache-Control": "no-store"}  # a seed makes it cacheable: every call must reach the upstream
    r = client.chat.completions.create(model="echo", messages=MSG, extra_body=fields, extra_headers=fresh)  # type: ignore[call-overload]
    assert r.choices[0].message.content == "hello from echo"
    assert env.stats("echo")["last_body"] == {"model": "up-echo", "messages": MSG, **fields}
    chunks = list(
        client.chat.completions.create(  # type: ignore[call-overload]
            model="echo",
            messages=MSG,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=fields,
            extra_headers=fresh,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    sent = env.stats("echo")["last_body"]
    assert sent == {
        "model": "up-echo",
        "messages": MSG,
        "stream": True,
        "stream_options": {"include_usage": True},
        **fields,
    }


def test_n_goes_to_gateway_upstreams(env: Env, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="echo", messages=MSG, n=3)  # type: ignore[arg-type]
    assert env.stats("echo")["last_body"] == {"model": "up-echo", "messages": MSG, "n": 3}
    _refused(lambda: client.chat.completions.create(model="echo", messages=MSG, n=129), "n")  # type: ignore[arg-type]


def test_gateway_answers_come_back_unchanged(env: Env, client: openai.OpenAI) -> None:
    """An upstream's tool calls and logprobs reach the client as the upstream sent them."""
    token = {
        "token": "{",
        "logprob": -0.1,
        "bytes": [123],
        "top_logprobs": [{"token": "{", "logprob": -0.1, "bytes": [123]}],
    }
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
    }
    answer = {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1,
        "model": "up-echo",
        "system_fingerprint": "fp_up",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "logprobs": {"content": [token], "refusal": None},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    head = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "up-echo"}
    chunks = [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "tool_calls": [{"index": 0, **call}]},
                    "logprobs": {"content": [token]},
                    "finish_reason": None,
                }
            ],
        },
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    httpx.post(
        env.fault + "/admin/faults",
        json={
            "instance": "echo",
            "faults": [{"mode": "reply", "answer": answer, "chunks": chunks, "count": 2}],
        },
    ).raise_for_status()
    try:
        kw: dict[str, Any] = {"messages": MSG, "tools": TOOLS, "logprobs": True, "top_logprobs": 1}
        r = httpx.post(env.base + "/v1/chat/completions", json={"model": "echo", **kw}, timeout=30)
        assert r.status_code == 200 and r.json() == answer, r.text
        got = list(client.chat.completions.create(model="echo", stream=True, **kw))
        assert [c.model_dump(exclude_unset=True) for c in got] == chunks
    finally:
        httpx.post(env.fault + "/admin/reset").raise_for_status()


# -- the embedded model: response_format through llama.cpp's grammar --------------------------------


def _text(client: openai.OpenAI, model: str, stream: bool, **kw: Any) -> tuple[str, str | None]:
    """The answer's text and finish_reason, streamed (the deltas joined) or not."""
    if not stream:
        r = client.chat.completions.create(model=model, stream=False, **kw)
        return r.choices[0].message.content or "", r.choices[0].finish_reason
    chunks = list(client.chat.completions.create(model=model, stream=True, **kw))
    finish = next(
        (c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason), None
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), finish


def _is_person(value: Any) -> bool:
    """PERSON_SCHEMA, checked by hand (no JSON Schema library among the dependencies)."""
    return (
        isinstance(value, dict)
        and set(value) == {"name", "age"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 20
        and type(value["age"]) is int
        and 0 <= value["age"] <= 150
    )


@pytest.mark.parametrize("model", ["local", "embedded"])
@pytest.mark.parametrize("stream", [False, True])
def test_embedded_model_answers_json_for_a_schema(client: openai.OpenAI, model: str, stream: bool) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}}
    text, finish = _text(
        client, model, stream, messages=PERSON, max_tokens=80, temperature=0.8, seed=5, response_format=fmt
    )
    assert finish == "stop", text
    assert _is_person(json.loads(text)), text
    plain, _ = _text(client, model, stream, messages=PERSON, max_tokens=20, temperature=0.8, seed=5)
    assert plain != text  # the grammar made the difference


@pytest.mark.parametrize("model", ["local", "embedded"])
@pytest.mark.parametrize("stream", [False, True])
def test_embedded_model_answers_a_json_object(client: openai.OpenAI, model: str, stream: bool) -> None:
    messages = [{"role": "user", "content": 'Answer with the JSON object {"ok": true} and nothing else.'}]
    text, finish = _text(
        client, model, stream, messages=messages, max_tokens=120, response_format={"type": "json_object"}
    )
    assert finish == "stop", text
    assert isinstance(json.loads(text), dict), text


@pytest.mark.parametrize("model", ["local", "embedded"])
def test_a_schema_the_model_cannot_follow_is_400(client: openai.OpenAI, model: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}
    _refused(
        lambda: client.chat.completions.create(model=model, messages=MSG, response_format=fmt),
        "response_format",
    )  # type: ignore[arg-type]


def test_rag_answers_refuse_a_json_response_format(client: openai.OpenAI) -> None:
    _refused(
        lambda: client.chat.completions.create(
            model="local", messages=MSG, response_format={"type": "json_object"}, extra_body={"rag": {}}
        ),
        "response_format",
    )


# -- the embedded model: logprobs -------------------------------------------------------------------


def _check_logprobs(tokens: list[Any], text: str, top: int) -> None:
    assert tokens and "".join(t.token for t in tokens) == text
    for t in tokens:
        assert t.logprob <= 0 and bytes(t.bytes or []).decode("utf-8", "replace")
        assert len(t.top_logprobs) == top
        assert all(a.logprob <= 0 for a in t.top_logprobs)
        if top:  # the alternatives are the most likely first; the chosen token is one at temperature 0
            assert [a.logprob for a in t.top_logprobs] == sorted(
                (a.logprob for a in t.top_logprobs), reverse=True
            )
            assert t.token == t.top_logprobs[0].token


@pytest.mark.parametrize("model", ["local", "embedded"])
@pytest.mark.parametrize("top", [0, 2, 20])
def test_embedded_model_returns_logprobs(client: openai.OpenAI, model: str, top: int) -> None:
    kw: dict[str, Any] = {
        "messages": MSG,
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": top,
    }
    r = client.chat.completions.create(model=model, **kw)
    choice = r.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    _check_logprobs(choice.logprobs.content, choice.message.content or "", top)
    chunks = [c for c in client.chat.completions.create(model=model, stream=True, **kw) if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    assert text == choice.message.content
    _check_logprobs(streamed, text, top)
    # not asked: none sent
    plain = client.chat.completions.create(model=model, messages=MSG, max_tokens=3)
    assert plain.choices[0].logprobs is None


def test_rag_answers_refuse_logprobs(client: openai.OpenAI) -> None:
    _refused(
        lambda: client.chat.completions.create(model="rag/none", messages=MSG, logprobs=True),
        "logprobs",
    )


# -- the embedded model: tools through llama.cpp's grammar ---------------------------------------

WEATHER = [{"role": "user", "content": "What is the weather in Oslo? Use the weather tool."}]
NAMED = {"type": "function", "function": {"name": "weather"}}


def _call(client: openai.OpenAI, model: str, stream: bool, **kw: Any) -> tuple[Any, str | None]:
    """(message or the streamed deltas' tool calls joined, finish_reason); streamed, each call
    also has ``fragments`` (how many chunks carried a piece of its arguments) and the first
    ``span`` (seconds from its first delta to its last)."""
    if not stream:
        r = client.chat.completions.create(model=model, **kw)
        return r.choices[0].message, r.choices[0].finish_reason
    fresh = {"Cache-Control": "no-store"}  # generated, not a cached answer replayed in one piece
    stream_of = client.chat.completions.create(model=model, stream=True, extra_headers=fresh, **kw)
    timed = [(time.monotonic(), c) for c in stream_of]
    chunks = [c for _, c in timed if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = _joined([c.choices[0].delta for c in chunks])
    if calls:  # from the first tool-call delta to the last arguments fragment, in seconds
        at = [t for t, c in timed if c.choices and c.choices[0].delta.tool_calls]
        calls[0]["span"] = at[-1] - at[0]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    finish = next((c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason), None)
    return {"content": content, "tool_calls": calls}, finish


def _joined(deltas: list[Any]) -> list[dict[str, Any]]:
    """A stream's tool calls, their deltas joined by index (the first carries id and name)."""
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        for t in d.tool_calls or []:
            call = calls.setdefault(t.index, {"id": "", "name": "", "arguments": "", "fragments": 0})
            call["id"] += t.id or ""
            call["name"] += (t.function.name if t.function else None) or ""
            fragment = (t.function.arguments if t.function else None) or ""
            call["arguments"] += fragment
            call["fragments"] += bool(fragment)
    return [calls[i] for i in sorted(calls)]


def _calls(message: Any) -> list[dict[str, str]]:
    if isinstance(message, dict):
        return list(message["tool_calls"])
    return [
        {"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
        for t in message.tool_calls or []
    ]


@pytest.mark.parametrize("model", ["local", "embedded"])
@pytest.mark.parametrize("choice", ["required", "named"])
@pytest.mark.parametrize("stream", [False, True])
def test_embedded_model_calls_the_tool(client: openai.OpenAI, model: str, choice: str, stream: bool) -> None:
    tool_choice = NAMED if choice == "named" else "required"
    message, finish = _call(
        client,
        model,
        stream,
        messages=WEATHER,
        tools=TOOLS,
        tool_choice=tool_choice,
        max_tokens=60,
        temperature=0,
    )
    assert finish == "tool_calls", message
    (call,) = _calls(message)
    assert call["id"].startswith("call_") and call["name"] == "weather"
    arguments = json.loads(call["arguments"])  # streamed: the fragments join to valid JSON
    assert isinstance(arguments, dict) and isinstance(arguments["city"], str)
    if stream:  # streamed as the model generates them, not in one burst once the answer is done
        assert call["fragments"] > 1 and call["span"] > 0.005, call


@pytest.mark.parametrize("model", ["local", "embedded"])
@pytest.mark.parametrize("stream", [False, True])
def test_auto_none_and_the_next_turn(client: openai.OpenAI, model: str, stream: bool) -> None:
    message, finish = _call(
        client, model, stream, messages=WEATHER, tools=TOOLS, max_tokens=60, temperature=0
    )
    calls = _calls(message)
    if calls:  # auto: a call or an answer, both well formed
        assert finish == "tool_calls" and json.loads(calls[0]["arguments"])["city"]
    else:
        assert finish in ("stop", "length")
    message, finish = _call(
        client, model, stream, messages=WEATHER, tools=TOOLS, tool_choice="none", max_tokens=8
    )
    assert not _calls(message) and finish in ("stop", "length")
    # the tool's result in the next turn
    history = [
        *WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 8 degrees."},
    ]
    message, finish = _call(
        client, model, stream, messages=history, tools=TOOLS, max_tokens=60, temperature=0
    )
    assert finish in ("stop", "length", "tool_calls")
    for call in _calls(message):
        assert json.loads(call["arguments"])["city"]


@pytest.mark.parametrize("model", ["local", "embedded"])
def test_tools_with_a_json_format_or_logprobs_are_400(client: openai.OpenAI, model: str) -> None:
    kw: dict[str, Any] = {"model": model, "messages": MSG, "tools": TOOLS}
    _refused(
        lambda: client.chat.completions.create(**kw, response_format={"type": "json_object"}),
        "response_format",
    )
    _refused(lambda: client.chat.completions.create(**kw, logprobs=True), "logprobs")


@pytest.mark.parametrize("model", ["local", "embedded"])
def test_tool_parameters_the_model_cannot_follow_are_400(client: openai.OpenAI, model: str) -> None:
    broken = [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/$defs/missing"}}}]
    _refused(lambda: client.chat.completions.create(model=model, messages=MSG, tools=broken), "tools")  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["local", "embedded"])
@pytest.mark.parametrize("stream", [False, True])
def test_seed_reproduces_a_sampled_answer(client: openai.OpenAI, model: str, stream: bool) -> None:
    kw: dict[str, Any] = {"messages": MSG, "max_tokens": 12, "temperature": 1.0}
    answers = [_text(client, model, stream, seed=11, **kw)[0] for _ in range(2)]
    assert answers[0] == answers[1]
    others = {_text(client, model, stream, seed=seed, **kw)[0] for seed in (1, 2, 3)}
    assert len(others | {answers[0]}) > 1  # temperature 1 does sample: the seed is what repeats it


@pytest.mark.parametrize("model", ["local", "embedded"])
def test_embedded_model_answers_n_choices(client: openai.OpenAI, model: str) -> None:
    kw: dict[str, Any] = {"messages": MSG, "max_tokens": 12, "temperature": 1.0, "seed": 21, "n": 2}
    r = client.chat.completions.create(model=model, **kw)
    assert [c.index for c in r.choices] == [0, 1] and all(c.message.content for c in r.choices)
    assert r.choices[0].message.content != r.choices[1].message.content  # seed + i per choice
    again = client.chat.completions.create(model=model, **kw)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    assert r.usage is not None and r.usage.completion_tokens == sum(
        client.chat.completions.create(model=model, **{**kw, "n": 1, "seed": 21 + i}).usage.completion_tokens  # type: ignore[union-attr]
        for i in range(2)
    )
    tooled = client.chat.completions.create(
        model=model, messages=WEATHER, tools=TOOLS, tool_choice=NAMED, n=2, max_tokens=60, temperature=0
    )
    assert [c.finish_reason for c in tooled.choices] == ["tool_calls", "tool_calls"]
    # more choices than the model's slots (llm.n_parallel=2), streamed or not, or rag/: refused naming n
    _refused(lambda: client.chat.completions.create(model=model, **{**kw, "n": 3}), "n")
    _refused(lambda: client.chat.completions.create(model=model, stream=True, **{**kw, "n": 3}), "n")
    _refused(lambda: client.chat.completions.create(model="rag/none", messages=MSG, n=2), "n")  # type: ignore[arg-type]
    _refused(lambda: client.chat.completions.create(model="rag/none", messages=MSG, n=2, stream=True), "n")  # type: ignore[arg-type]


def _choices(chunks: list[Any]) -> dict[int, dict[str, Any]]:
    """Per choice index: its chunks' deltas, its finish_reasons, and the stream shape checked (one
    choice per chunk; the choice's first chunk is its role, its last its only finish_reason)."""
    out: dict[int, dict[str, Any]] = {}
    for c in chunks:
        if not c.choices:
            continue
        (choice,) = c.choices
        got = out.setdefault(choice.index, {"deltas": [], "finish": [], "logprobs": []})
        if not got["deltas"]:
            assert choice.delta.role == "assistant", c
        assert not got["finish"], f"a chunk after choice {choice.index}'s finish_reason: {c}"
        got["deltas"].append(choice.delta)
        if choice.finish_reason is not None:
            got["finish"].append(choice.finish_reason)
        if choice.logprobs is not None:
            got["logprobs"].extend(choice.logprobs.content or [])
    for i, got in out.items():
        assert len(got["finish"]) == 1, (i, got)
        got["text"] = "".join(d.content or "" for d in got["deltas"])
    return out


@pytest.mark.parametrize("model", ["local", "embedded"])
def test_embedded_model_streams_n_choices(client: openai.OpenAI, model: str) -> None:
    kw: dict[str, Any] = {"messages": STORY, "max_tokens": 12, "temperature": 1.0, "seed": 21, "n": 2}
    whole = client.chat.completions.create(model=model, **kw)
    chunks = list(
        client.chat.completions.create(model=model, stream=True, stream_options={"include_usage": True}, **kw)
    )
    choices = _choices(chunks)
    assert sorted(choices) == [0, 1]
    # each streamed choice is the non-streamed one (seed + i per choice), with its own end
    assert [choices[i]["text"] for i in (0, 1)] == [c.message.content for c in whole.choices]
    assert [choices[i]["finish"][0] for i in (0, 1)] == [c.finish_reason for c in whole.choices]
    assert choices[0]["text"] != choices[1]["text"]
    # generated at once: the choices' pieces are interleaved, not one choice after the other
    order = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.content]
    assert order.index(1) < len(order) - 1 - order[::-1].index(0), order
    # one usage chunk, last: the prompt once, every choice's tokens (as non-streamed)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert whole.usage is not None and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    # tool calls and logprobs, per choice
    tooled = _choices(
        list(
            client.chat.completions.create(
                model=model,
                messages=WEATHER,
                tools=TOOLS,
                tool_choice=NAMED,
                n=2,
                max_tokens=60,
                temperature=0,
                stream=True,
                extra_headers={"Cache-Control": "no-store"},  # generated, not replayed from the cache
            )
        )
    )
    assert sorted(tooled) == [0, 1]
    for got in tooled.values():
        assert got["finish"] == ["tool_calls"]
        assert all(t.index == 0 for d in got["deltas"] for t in d.tool_calls or [])
        (call,) = _joined(got["deltas"])  # each choice's deltas join to its own call
        assert call["id"].startswith("call_") and call["name"] == "weather" and call["fragments"] > 1
        assert isinstance(json.loads(call["arguments"])["city"], str)
    scored = _choices(
        list(
            client.chat.completions.create(
                model=model, stream=True, logprobs=True, top_logprobs=2, **{**kw, "max_tokens": 6}
            )
        )
    )
    for got in scored.values():
        assert "".join(t.token for t in got["logprobs"]) == got["text"]
        assert all(len(t.top_logprobs) == 2 for t in got["logprobs"])


def test_extractive_rag_answers_refuse_tools(client: openai.OpenAI) -> None:
    # generate and agentic rag/ answers take tools (tests/test_agentic.py); an extractive one calls none
    extractive = {"rag": {"mode": "extractive"}}
    _refused(
        lambda: client.chat.completions.create(
            model="rag/none", messages=MSG, tools=TOOLS, extra_body=extractive
        ),  # type: ignore[arg-type]
        "tools",
    )


# -- /v1/completions: logprobs in the legacy shape -------------------------------------------------


def _check_legacy(logprobs: Any, text: str, top: int) -> None:
    assert logprobs is not None and logprobs.tokens, logprobs
    assert "".join(logprobs.tokens) == text
    n = len(logprobs.tokens)
    assert len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(logprobs.text_offset) == n
    for token, lp, alternatives, offset in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, logprobs.text_offset, strict=True
    ):
        assert text[offset : offset + len(token)] == token  # where the token starts in the text
        assert lp <= 0 and alternatives[token] == lp  # the sampled token is always among them
        assert max(top, 1) <= len(alternatives) <= top + 1 and all(v <= 0 for v in alternatives.values())
        if top:  # temperature 0: the sampled token is the likeliest
            assert lp == max(alternatives.values())


@pytest.mark.parametrize("top", [0, 2, 5])
def test_completions_return_legacy_logprobs(client: openai.OpenAI, top: int) -> None:
    kw: dict[str, Any] = {
        "model": "local",
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
    }
    r = client.completions.create(logprobs=top, **kw)
    choice = r.choices[0]
    _check_legacy(choice.logprobs, choice.text, top)
    assert r.usage is not None and len(choice.logprobs.tokens) == r.usage.completion_tokens  # type: ignore[union-attr]
    chunks = [c for c in client.completions.create(logprobs=top, stream=True, **kw) if c.choices]
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    for c in chunks:  # each chunk the logprobs of its own text, offsets into the whole text
        if c.choices[0].text:
            lp = c.choices[0].logprobs
            assert lp is not None and "".join(lp.tokens or []) == c.choices[0].text
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [t for lp in streamed for t in lp.tokens or []] == choice.logprobs.tokens  # type: ignore[union-attr]
    assert [o for lp in streamed for o in lp.text_offset or []] == choice.logprobs.text_offset  # type: ignore[union-attr]
    # not asked: none sent
    assert client.completions.create(**kw).choices[0].logprobs is None


@pytest.mark.parametrize("stream", [False, True])
def test_completions_logprobs_out_of_range_or_with_echo_are_400(client: openai.OpenAI, stream: bool) -> None:
    kw: dict[str, Any] = {"model": "local", "prompt": "Hello", "max_tokens": 2, "stream": stream}
    _refused(lambda: client.completions.create(logprobs=6, **kw), "logprobs")
    _refused(lambda: client.completions.create(logprobs=-1, **kw), "logprobs")
    _refused(lambda: client.completions.create(logprobs=1, echo=True, **kw), "echo")
    echoed = client.completions.create(echo=True, **{**kw, "stream": False})  # echo alone is honoured
    assert echoed.choices[0].text.startswith("Hello")


def test_a_client_that_leaves_an_n_stream_stops_every_choice(env: Env, client: openai.OpenAI) -> None:
    """Both of the model's slots (llm.n_parallel=2) run the abandoned choices: had they run on to
    max_tokens (minutes here), the next request would wait for them."""
    long = [{"role": "user", "content": "Write a very long story about a dragon, at least 2000 words."}]
    body = {
        "model": "local",
        "messages": long,
        "max_tokens": 4000,
        "n": 2,
        "stream": True,
        "temperature": 0.7,
    }
    seen: set[int] = set()
    with httpx.stream("POST", env.base + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                if choice["delta"].get("content"):
                    seen.add(choice["index"])
            if seen == {0, 1}:
                break  # both generating at once; the client goes away
    assert seen == {0, 1}
    t0 = time.perf_counter()
    r2 = client.chat.completions.create(model="local", messages=MSG, max_tokens=4, n=2)
    assert len(r2.choices) == 2
    assert time.perf_counter() - t0 < 15, "the abandoned choices kept their slots"
