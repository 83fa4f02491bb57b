"""Agentic RAG (``rag.mode: agentic``) and the caller's tools on ``rag/`` answers, over real HTTP
on loopback with the official openai SDK: one in-process server (uvicorn, the real app, the real
embedder, Qdrant engine and model), and a real tool server that records what it is sent.

The shipped 135M model picks ``search`` or ``answer`` at each step and, in every trial made,
never a server tool; so where a test needs a particular decision (call this tool, with these
arguments), the step's decision is scripted (``Scripted``): the model's other calls, the final
answer among them, are the real model's. A scripted decision is the input of what is tested
here (ragline's run: pause, approval, outputs, limits), never its result.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from conftest import free_port
from ragline.answer import agent
from ragline.answer.agent import Decision, RunState
from ragline.answer.llm import Completion, LlamaCppLLM
from ragline.config import AgentSettings, ServerToolSettings, load_settings
from ragline.embed.onnx import OnnxEmbedder
from ragline.engine import Engine
from ragline.server.app import create_app
from ragline.server.runs import RunStore
from ragline.state.memory import InProcessState

DOCS = {
    "tea.md": "# Tea\n\nGreen tea is brewed at 80 degrees Celsius for two minutes. Black tea takes "
    "boiling water and four minutes. Oolong sits between them.\n",
    "orders.md": "# Orders\n\nEvery order ships from the Leeds warehouse within two working days. "
    "Orders over 50 pounds ship free of charge. A tracking number is sent by email.\n",
    "bikes.md": "# Bikes\n\nThe shop repairs bicycles on Saturdays. A puncture repair costs 8 pounds "
    "and a full service costs 60 pounds.\n",
}
ORDER_TOOL = {
    "name": "order_status",
    "description": "Look up the shipping status of an order by its number.",
    "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
    "requires_approval": True,
}
CALLER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class Scripted:
    """The real model, except that the next agentic steps decide what ``script`` says."""

    def __init__(self, real: LlamaCppLLM) -> None:
        self._real = real
        self.script: list[tuple[str, dict[str, Any]]] = []
        self.steps = 0

    @property
    def name(self) -> str:
        return self._real.name

    def chat(self, messages: Sequence[dict[str, str]], **kwargs: Any) -> Completion:
        step = messages[0]["content"].startswith(agent.SYSTEM)
        if step:
            self.steps += 1
        if step and self.script:
            name, arguments = self.script.pop(0)
            text = json.dumps({"tool_call": {"name": name, "arguments": arguments}})
            return Completion(text, 10, 10, "stop")
        return self._real.chat(messages, **kwargs)

    def complete(self, prompt: str, **kwargs: Any) -> Completion:
        return self._real.complete(prompt, **kwargs)


class ToolServer:
    """A real HTTP tool: records each call's JSON body; ``/fail`` answers 500."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                calls.append((self.path, body))
                if self.path == "/fail":
                    out, status = b"database is down", 500
                else:
                    out, status = (
                        json.dumps({"order": body.get("order"), "status": "shipped on 3 March"}).encode(),
                        200,
                    )
                self.send_response(status)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


class Svc:
    def __init__(self, base: str, llm: Scripted, tools: ToolServer) -> None:
        self.base = base
        self.llm = llm
        self.tools = tools
        self.client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)

    def ask(self, question: str, **rag: Any) -> Any:
        return self.client.chat.completions.create(
            model="rag/default",
            messages=[{"role": "user", "content": question}],
            extra_body={"rag": {"mode": "agentic", **rag}},
        )

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.base + path, json=body, timeout=120)


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, embedder: OnnxEmbedder, llm: LlamaCppLLM) -> Iterator[Svc]:
    tmp = tmp_path_factory.mktemp("agentic")
    tools = ToolServer()
    docs = tmp / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    server_tools = [
        {**ORDER_TOOL, "url": tools.url + "/orders"},
        {"name": "stock", "description": "Stock of a part.", "url": tools.url + "/stock"},
        {"name": "broken", "description": "Always fails.", "url": tools.url + "/fail"},
    ]
    settings = load_settings(data_dir=tmp / "data", answer={"agent": {"tools": server_tools, "max_steps": 3}})
    scripted = Scripted(llm)
    engine = Engine(settings, embedder=embedder, llm=scripted)  # type: ignore[arg-type]
    engine.ingest([docs])
    app = create_app(engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not get ready"
        time.sleep(0.1)
    try:
        yield Svc(base, scripted, tools)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        tools.close()
        engine.close()


@pytest.fixture(autouse=True)
def _fresh(svc: Svc) -> None:
    svc.llm.script.clear()
    svc.tools.calls.clear()


def _run(resp: Any) -> dict[str, Any]:
    return dict(resp.model_extra["ragline"]["run"])


# -- the run with the real model -------------------------------------------------------------------


def test_an_agentic_answer_searches_then_answers_with_citations(svc: Svc) -> None:
    resp = svc.ask("How long is green tea brewed?")
    choice = resp.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content
    run = _run(resp)
    assert run["status"] == "completed" and "required_action" not in run
    steps = run["steps"]
    assert steps[0]["type"] == "search" and steps[0]["query"] == "How long is green tea brewed?"
    assert steps[0]["chunks"], steps
    assert 1 <= len(steps) <= 1 + 3  # the first search, then at most max_steps decisions
    cited = resp.model_extra["citations"]
    assert cited and all(c["doc_id"] for c in cited)
    assert "tea" in " ".join(c["snippet"] for c in cited).lower()
    # the run stays readable, with the same steps
    got = httpx.get(f"{svc.base}/v1/rag/runs/{run['id']}").json()
    assert got["status"] == "completed" and got["steps"] == steps
    assert resp.usage.completion_tokens > 0


def test_an_agentic_answer_streams_its_final_answer(svc: Svc) -> None:
    stream = svc.client.chat.completions.create(
        model="rag/default",
        messages=[{"role": "user", "content": "What does a puncture repair cost?"}],
        extra_body={"rag": {"mode": "agentic"}},
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.model_extra["ragline"]["run"]["status"] == "completed"


# -- searches --------------------------------------------------------------------------------------


def test_each_search_adds_its_sources_and_the_answer_cites_from_every_step(svc: Svc) -> None:
    svc.llm.script[:] = [("search", {"query": "puncture repair price"}), ("answer", {})]
    resp = svc.ask("How long is green tea brewed?")
    steps = _run(resp)["steps"]
    assert [s["type"] for s in steps] == ["search", "search"]
    assert steps[1]["query"] == "puncture repair price"
    first, second = steps[0]["chunks"][0], steps[1]["chunks"][0]
    assert first != second  # the rewritten search found what the first did not
    found = {c for s in steps for c in s["chunks"]}
    cited = resp.model_extra["citations"]
    assert resp.choices[0].finish_reason == "stop" and cited
    assert all(c["chunk_id"] in found for c in cited)


def test_the_steps_are_bounded_and_a_repeated_search_ends_the_run(svc: Svc) -> None:
    svc.llm.script[:] = [("search", {"query": f"query number {i}"}) for i in range(10)]
    steps = _run(svc.ask("What is oolong?"))["steps"]
    assert len(steps) == 1 + 3  # answer.agent.max_steps = 3
    svc.llm.script[:] = [("search", {"query": "What  is OOLONG?"}), ("search", {"query": "never run"})]
    steps = _run(svc.ask("What is oolong?"))["steps"]
    assert len(steps) == 1  # the same query (case, spaces) finds nothing new: the run answers


def test_the_requests_filters_hold_for_every_search_and_a_bad_model_filter_fails_its_step(svc: Svc) -> None:
    svc.llm.script[:] = [
        ("search", {"query": "tea", "filters": ["title=Bikes"]}),
        ("search", {"query": "x", "filters": ["??"]}),
    ]
    resp = svc.ask("What does a puncture repair cost?", filters=["title=Bikes"])
    steps = _run(resp)["steps"]
    assert steps[1]["filters"] == ["title=Bikes"] and steps[1]["status"] == "done"
    assert steps[2]["status"] == "failed" and "cannot parse filter" in steps[2]["error"]
    assert all(c["title"] == "Bikes" for c in resp.model_extra["citations"])
    for s in steps:
        assert s["status"] == "failed" or s["chunks"]
    svc.llm.script[:] = [("search", {"query": "green tea brewing", "filters": []})]
    resp = svc.ask("What does a puncture repair cost?", filters=["title=Bikes"])
    # the model's search cannot step outside the request's filter: only Bikes chunks come back
    assert all(c["title"] == "Bikes" for c in resp.model_extra["citations"])


# -- server tools ----------------------------------------------------------------------------------


def test_a_tool_that_needs_approval_pauses_the_run_until_approved(svc: Svc) -> None:
    svc.llm.script[:] = [("order_status", {"order": "A-17"}), ("answer", {})]
    resp = svc.ask("Where is my order A-17?")
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "order_status" and json.loads(call.function.arguments) == {"order": "A-17"}
    run = _run(resp)
    assert run["status"] == "requires_action"
    assert run["required_action"]["type"] == "approve_tool_calls"
    assert run["required_action"]["tool_calls"][0]["id"] == call.id
    assert svc.tools.calls == []  # nothing ran before the approval
    assert httpx.get(f"{svc.base}/v1/rag/runs/{run['id']}").json()["status"] == "requires_action"

    wrong = svc.post(f"/v1/rag/runs/{run['id']}/approve", {"tool_call_id": "call_x", "approve": True})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "tool_call_id"
    assert svc.tools.calls == []

    done = svc.post(f"/v1/rag/runs/{run['id']}/approve", {"tool_call_id": call.id, "approve": True})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["object"] == "chat.completion" and body["model"] == "rag/default"
    assert body["choices"][0]["finish_reason"] == "stop" and body["choices"][0]["message"]["content"]
    assert svc.tools.calls == [("/orders", {"order": "A-17"})]
    steps = body["ragline"]["run"]["steps"]
    assert steps[1] == {
        "type": "tool",
        "id": call.id,
        "name": "order_status",
        "arguments": {"order": "A-17"},
        "status": "done",
        "output": '{"order": "A-17", "status": "shipped on 3 March"}',
    }
    again = svc.post(f"/v1/rag/runs/{run['id']}/approve", {"tool_call_id": call.id, "approve": True})
    assert again.status_code == 400 and len(svc.tools.calls) == 1  # approved once, run once


def test_a_rejected_call_never_runs_and_the_run_goes_on(svc: Svc) -> None:
    svc.llm.script[:] = [("order_status", {"order": "B-2"}), ("answer", {})]
    run = _run(svc.ask("Where is my order B-2?"))
    call_id = run["required_action"]["tool_calls"][0]["id"]
    r = svc.post(
        f"/v1/rag/runs/{run['id']}/approve",
        {"tool_call_id": call_id, "approve": False, "reason": "not yours"},
    )
    assert r.status_code == 200, r.text
    step = r.json()["ragline"]["run"]["steps"][1]
    assert step["status"] == "rejected" and step["output"] == "The caller rejected this call: not yours"
    assert svc.tools.calls == []


def test_two_approvals_at_once_run_the_tool_once(svc: Svc) -> None:
    svc.llm.script[:] = [("order_status", {"order": "C-3"}), ("answer", {})]
    run = _run(svc.ask("Where is my order C-3?"))
    call_id = run["required_action"]["tool_calls"][0]["id"]

    async def both() -> list[int]:
        async with httpx.AsyncClient(base_url=svc.base, timeout=120) as c:
            body = {"tool_call_id": call_id, "approve": True}
            rs = await asyncio.gather(
                *(c.post(f"/v1/rag/runs/{run['id']}/approve", json=body) for _ in range(2))
            )
            return sorted(r.status_code for r in rs)

    codes = asyncio.run(both())
    assert codes[0] == 200 and codes[1] in (400, 409), codes
    assert len(svc.tools.calls) == 1


def test_tools_without_approval_run_inline_and_a_failing_one_is_a_failed_step(svc: Svc) -> None:
    svc.llm.script[:] = [("stock", {"part": "chain"}), ("broken", {}), ("answer", {})]
    resp = svc.ask("Is a bike chain in stock?")
    assert resp.choices[0].finish_reason == "stop"
    steps = _run(resp)["steps"]
    assert [(s["type"], s.get("name"), s["status"]) for s in steps] == [
        ("search", None, "done"),
        ("tool", "stock", "done"),
        ("tool", "broken", "failed"),
    ]
    assert steps[2]["output"] == "error: the tool answered HTTP 500: database is down"
    assert [p for p, _ in svc.tools.calls] == ["/stock", "/fail"]


def test_a_paused_run_streams_its_pending_call(svc: Svc) -> None:
    svc.llm.script[:] = [("order_status", {"order": "D-4"})]
    stream = svc.client.chat.completions.create(
        model="rag/default",
        messages=[{"role": "user", "content": "Where is order D-4?"}],
        extra_body={"rag": {"mode": "agentic"}},
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "order_status" and calls[0].id
    args = "".join(tc.function.arguments or "" for tc in calls)
    assert json.loads(args) == {"order": "D-4"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].model_extra["ragline"]["run"]["status"] == "requires_action"


def test_an_async_job_carries_the_pending_call(svc: Svc) -> None:
    svc.llm.script[:] = [("order_status", {"order": "E-5"}), ("answer", {})]
    job = svc.post(
        "/v1/async/chat/completions",
        {
            "model": "rag/default",
            "messages": [{"role": "user", "content": "Where is order E-5?"}],
            "rag": {"mode": "agentic"},
        },
    ).json()
    deadline = time.monotonic() + 120
    while job["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
        job = httpx.get(f"{svc.base}/v1/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job
    run = job["result"]["ragline"]["run"]
    assert job["result"]["choices"][0]["finish_reason"] == "tool_calls"
    assert run["status"] == "requires_action"
    call_id = run["required_action"]["tool_calls"][0]["id"]
    r = svc.post(f"/v1/rag/runs/{run['id']}/approve", {"tool_call_id": call_id, "approve": True})
    assert r.status_code == 200 and r.json()["ragline"]["run"]["status"] == "completed"
    assert svc.tools.calls == [("/orders", {"order": "E-5"})]


# -- the caller's tools ----------------------------------------------------------------------------


def test_a_callers_tool_goes_back_to_the_caller_and_its_output_continues_the_run(svc: Svc) -> None:
    svc.llm.script[:] = [("weather", {"city": "Leeds"}), ("answer", {})]
    messages: list[Any] = [{"role": "user", "content": "Should I ship my order from Leeds today?"}]
    first = svc.client.chat.completions.create(
        model="rag/default", messages=messages, tools=[CALLER_TOOL], extra_body={"rag": {"mode": "agentic"}}
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "weather"
    assert _run(first)["required_action"]["type"] == "submit_tool_outputs"
    # OpenAI's tool loop: the assistant's call and the tool's result, sent back
    messages += [first.choices[0].message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."}]
    second = svc.client.chat.completions.create(
        model="rag/default", messages=messages, tools=[CALLER_TOOL], extra_body={"rag": {"mode": "agentic"}}
    )
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    run = _run(second)
    assert run["id"] == _run(first)["id"]
    assert run["steps"][1]["output"] == "Sunny, 21 degrees." and run["steps"][1]["name"] == "weather"
    # the same call answered twice: refused
    with pytest.raises(openai.BadRequestError):
        svc.client.chat.completions.create(
            model="rag/default",
            messages=messages,
            tools=[CALLER_TOOL],
            extra_body={"rag": {"mode": "agentic"}},
        )


def test_a_callers_tool_output_can_be_submitted_to_the_run(svc: Svc) -> None:
    svc.llm.script[:] = [("weather", {"city": "York"}), ("answer", {})]
    first = svc.client.chat.completions.create(
        model="rag/default",
        messages=[{"role": "user", "content": "Is it a good day for a bike service?"}],
        tools=[CALLER_TOOL],
        extra_body={"rag": {"mode": "agentic"}},
    )
    run = _run(first)
    call_id = run["required_action"]["tool_calls"][0]["id"]
    approve = svc.post(f"/v1/rag/runs/{run['id']}/approve", {"tool_call_id": call_id, "approve": True})
    assert approve.status_code == 400 and approve.json()["error"]["param"] == "output"
    r = svc.post(
        f"/v1/rag/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": call_id, "output": "Rain all day."}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["ragline"]["run"]["steps"][1]["output"] == "Rain all day."


def test_rag_generate_offers_the_callers_tools_beside_the_sources(svc: Svc) -> None:
    forced = {"type": "function", "function": {"name": "weather"}}
    resp = svc.client.chat.completions.create(
        model="rag/default",
        messages=[{"role": "user", "content": "What is the weather in Leeds for my order?"}],
        tools=[CALLER_TOOL],
        tool_choice=forced,  # type: ignore[arg-type]
        max_tokens=60,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    # streamed: the same call in deltas that join to its arguments
    stream = svc.client.chat.completions.create(
        model="rag/default",
        messages=[{"role": "user", "content": "What is the weather in Leeds for my order?"}],
        tools=[CALLER_TOOL],
        tool_choice=forced,  # type: ignore[arg-type]
        max_tokens=60,
        stream=True,
    )
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "weather"
    assert isinstance(json.loads("".join(tc.function.arguments or "" for tc in calls))["city"], str)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # the next turn carries the tool's result; with tool_choice none the answer is text with citations
    messages: list[Any] = [
        {"role": "user", "content": "Where do orders ship from, and what is the weather there?"},
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny in Leeds."},
    ]
    answer = svc.client.chat.completions.create(
        model="rag/default", messages=messages, tools=[CALLER_TOOL], tool_choice="none"
    )
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content


def test_what_does_not_fit_is_refused_with_the_field_named(svc: Svc) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [CALLER_TOOL], "extra_body": {"rag": {"mode": "extractive"}}}, "tools"),
        (
            {"tools": [CALLER_TOOL], "tool_choice": "required", "extra_body": {"rag": {"mode": "agentic"}}},
            "tool_choice",
        ),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            svc.client.chat.completions.create(
                model="rag/default", messages=[{"role": "user", "content": "What is oolong?"}], **extra
            )
        assert e.value.body["param"] == param, e.value.body  # type: ignore[index]
    # a tool message naming no run of ours
    with pytest.raises(openai.BadRequestError) as e:
        svc.client.chat.completions.create(
            model="rag/default",
            messages=[
                {"role": "user", "content": "What is oolong?"},
                {"role": "tool", "tool_call_id": "call_" + "0" * 24 + "_1", "content": "x"},
            ],
            extra_body={"rag": {"mode": "agentic"}},
        )
    assert e.value.body["code"] == "run_not_found"  # type: ignore[index]
    for path in ("/v1/rag/runs/run_nope", "/v1/rag/runs/../../etc"):
        assert httpx.get(svc.base + path).status_code == 404
    r = svc.post("/v1/rag/runs/run_nope/approve", {"tool_call_id": "c", "approve": True})
    assert r.status_code == 404 and r.json()["error"]["code"] == "run_not_found"
    r = svc.post("/v1/rag/runs/run_nope/approve", {"tool_call_id": "c"})
    assert r.status_code == 400  # approve is required


# -- without HTTP ----------------------------------------------------------------------------------


def test_a_run_is_plain_data_and_another_tenant_never_loads_it() -> None:
    run = RunState.new("q?", "acme~docs", ["title=A"], [CALLER_TOOL], tenant="acme", model="rag/docs")
    run.steps.append(agent.Step("search", run.call_id(), "search", {"query": "q?"}))
    run.pending = agent.Pending("approval", run.call_id(), "order_status", {"order": "1"})
    again = RunState.from_json(run.to_json())
    assert again == run
    assert RunState.of_call(run.pending.call_id) == run.id
    assert RunState.of_call("call_abc") is None and RunState.of_call("call_" + "x" * 24 + "_y") is None

    async def check() -> None:
        store = RunStore(InProcessState(), ttl_s=60)
        await store.save(run)
        assert await store.load(run.id, "acme") == run
        assert await store.load(run.id, "beta") is None
        assert await store.load(run.id, None) is None
        await store.claim(run.id)
        with pytest.raises(Exception, match="being continued"):
            await store.claim(run.id)
        await store.release(run.id)
        await store.claim(run.id)

    asyncio.run(check())


def test_a_decision_that_does_not_fit_the_run_is_refused() -> None:
    agent_ = agent.Agent(AgentSettings(), llm=None, search=lambda q, f: [])  # type: ignore[arg-type]
    run = RunState.new("q?", "docs")
    with pytest.raises(agent.DecisionError):
        agent_.decide(run, Decision("call_x", approve=True))
    run.pending = agent.Pending("output", run.call_id(), "weather", {})
    with pytest.raises(agent.DecisionError) as e:
        agent_.decide(run, Decision(run.pending.call_id, approve=True))
    assert e.value.param == "output"


def test_the_tool_runner_reports_unreachable_and_slow_tools(tmp_path: Path) -> None:
    port = free_port()
    down = ServerToolSettings(name="down", url=f"http://127.0.0.1:{port}/x", timeout_s=2)
    status, output = agent.ToolRunner().run(down, {})
    assert status == "failed" and output == "error: the tool could not be reached (ConnectError)"


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        ({"name": "search", "url": "http://h/x"}, "built-in tool"),
        ({"name": "bad name", "url": "http://h/x"}, "pattern"),
        ({"name": "t", "url": "ftp://h/x"}, "not an http(s) URL"),
        ({"name": "t", "url": "http://h/x", "parameters": {"type": "nope"}}, "not a JSON type"),
        ({"name": "t", "url": "http://h/x", "parameters": {"type": "string"}}, "object schema"),
    ],
)
def test_server_tools_are_checked_when_the_settings_load(tool: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        load_settings(answer={"agent": {"tools": [tool]}})
    with pytest.raises(Exception, match="unique"):
        load_settings(answer={"agent": {"tools": [{"name": "a", "url": "http://h"}] * 2}})


def test_a_tools_headers_are_secrets() -> None:
    s = load_settings(
        answer={
            "agent": {
                "tools": [{"name": "a", "url": "http://h", "headers": {"Authorization": "Bearer s3cret"}}]
            }
        }
    )
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
