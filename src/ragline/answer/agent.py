"""Agentic answers: the model searches again, calls tools, then answers from every step's sources.

A run starts with a search for the question itself (what a one-step answer reads), then the model
decides, up to ``answer.agent.max_steps`` times, what comes next, as one tool call constrained by
llama.cpp's grammar (``answer/tools.py``):

- ``search(query, filters)``: retrieve again with a rewritten question (the request's own filters
  always apply as well; a query already searched ends the run: nothing new would come);
- a server tool (``answer.agent.tools``): its arguments are POSTed to its URL and the reply is
  the result; one marked ``requires_approval`` pauses the run until the caller approves or
  rejects the call;
- one of the caller's own ``tools``: the run pauses and the call goes to the caller, who sends
  its output back;
- ``answer``: enough has been found.

The answer is then written the way a one-step answer is (``Answerer.generate``), from the
sources of every search (interleaved by rank, so each step's best chunks are in the prompt) and
the tools' results, with its citations. A paused run is plain data (``RunState``, JSON): the
server keeps it in the shared state, so any replica can continue it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ragline.answer import tools
from ragline.answer.llm import LLM
from ragline.config import AgentSettings, ServerToolSettings
from ragline.errors import InvalidFilter
from ragline.index.filters import parse_filters
from ragline.optional import require
from ragline.types import Hit, Usage

if TYPE_CHECKING:
    import httpx

#: The extra that installs the HTTP client server tools are called with.
TOOLS_EXTRA = "tools"
TOOLS_FEATURE = "answer.agent.tools"

SEARCH_TOOL: dict[str, Any] = {
    "name": "search",
    "description": "Search the documents again, with a better query for what is still missing.",
    "parameters": {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "filters": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["query"],
    },
}
ANSWER_TOOL: dict[str, Any] = {
    "name": "answer",
    "description": "Write the answer: the sources found so far are enough.",
    "parameters": {"type": "object", "properties": {}},
}

SYSTEM = (
    "You answer a question from a collection of documents, one step at a time. Call search with "
    "a better query when the sources found so far do not answer the question, call a tool when "
    "its result is needed, and call answer when the sources are enough."
)

#: Characters of each source shown to a step's decision (the answer reads the whole source).
STEP_SOURCE_CHARS = 300

PendingKind = Literal["approval", "output"]


@dataclass(slots=True)
class Step:
    """One step of a run: a search (with the chunks it found) or a tool call (with its result)."""

    kind: Literal["search", "tool"]
    call_id: str
    name: str
    arguments: dict[str, Any]
    status: Literal["done", "rejected", "failed"] = "done"
    output: str = ""
    hits: list[Hit] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        if self.kind == "search":
            return {
                "type": "search",
                "query": self.arguments.get("query", ""),
                "filters": self.arguments.get("filters") or [],
                "status": self.status,
                "chunks": [h.chunk_id for h in self.hits],
                **({"error": self.output} if self.status == "failed" else {}),
            }
        return {
            "type": "tool",
            "id": self.call_id,
            "name": self.name,
            "arguments": self.arguments,
            "status": self.status,
            "output": self.output,
        }


@dataclass(slots=True)
class Pending:
    """The call a paused run waits on: an approval (a server tool) or an output (a caller's tool)."""

    kind: PendingKind
    call_id: str
    name: str
    arguments: dict[str, Any]

    def tool_call(self) -> dict[str, Any]:
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


@dataclass(slots=True)
class RunState:
    """Everything a run needs to go on, in any process."""

    id: str
    question: str
    collection: str
    #: The request's filters (``field=value`` strings); every search keeps them.
    filters: list[str]
    #: The caller's own tools (OpenAI's ``tools`` entries): their calls go back to the caller.
    caller_tools: list[dict[str, Any]] = field(default_factory=list)
    tenant: str | None = None
    #: The model name the caller asked (``rag/docs``, or the local model with ``rag``).
    model: str = ""
    steps: list[Step] = field(default_factory=list)
    decisions: int = 0
    pending: Pending | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: float = field(default_factory=time.time)

    @classmethod
    def new(
        cls,
        question: str,
        collection: str,
        filters: Sequence[str] | None = None,
        caller_tools: Sequence[Mapping[str, Any]] | None = None,
        tenant: str | None = None,
        model: str = "",
    ) -> RunState:
        return cls(
            id="run_" + secrets.token_hex(12),
            question=question,
            collection=collection,
            filters=list(filters or []),
            caller_tools=[dict(t) for t in caller_tools or []],
            tenant=tenant,
            model=model,
        )

    def call_id(self) -> str:
        return f"call_{self.id[4:]}_{len(self.steps)}"

    @staticmethod
    def of_call(call_id: str) -> str | None:
        """The run a call id (``call_<run>_<step>``) belongs to, or None (not a run's call)."""
        parts = call_id.split("_")
        if len(parts) == 3 and parts[0] == "call" and len(parts[1]) == 24 and parts[2].isdigit():
            return "run_" + parts[1]
        return None

    def status(self) -> str:
        return "requires_action" if self.pending is not None else "completed"

    def public(self) -> dict[str, Any]:
        """The run as the API shows it (OpenAI Assistants' ``requires_action`` shape for a pause)."""
        out: dict[str, Any] = {"id": self.id, "object": "rag.run", "status": self.status()}
        if self.pending is not None:
            kind = "approve_tool_calls" if self.pending.kind == "approval" else "submit_tool_outputs"
            out["required_action"] = {"type": kind, "tool_calls": [self.pending.tool_call()]}
        out["steps"] = [s.public() for s in self.steps]
        return out

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RunState:
        d = json.loads(raw)
        d["steps"] = [Step(**{**s, "hits": [Hit(**h) for h in s["hits"]]}) for s in d["steps"]]
        d["pending"] = Pending(**d["pending"]) if d["pending"] else None
        return cls(**d)


class Decision:
    """What the caller says about a paused run's pending call."""

    def __init__(
        self, call_id: str, *, approve: bool | None = None, output: str | None = None, reason: str = ""
    ) -> None:
        self.call_id = call_id
        self.approve = approve
        self.output = output
        self.reason = reason


class DecisionError(ValueError):
    """A decision that does not fit the run (another call, an approval for an output, ...)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


#: search(query, filters) -> hits: the engine's retrieval on the run's collection.
Search = Callable[[str, list[str]], list[Hit]]


class Agent:
    """Runs a ``RunState`` forward until it pauses or has its sources (``Agent.advance``)."""

    def __init__(
        self,
        settings: AgentSettings,
        llm: LLM,
        search: Search,
        runner: ToolRunner | None = None,
    ) -> None:
        self._settings = settings
        self._llm = llm
        self._search = search
        self._server_tools = {t.name: t for t in settings.tools}
        self._runner = runner or ToolRunner()

    def decide(self, state: RunState, decision: Decision) -> None:
        """Apply the caller's decision on the pending call (raises DecisionError if it does not fit)."""
        pending = state.pending
        if pending is None:
            raise DecisionError(f"run {state.id} waits for no tool call", "tool_call_id")
        if decision.call_id != pending.call_id:
            raise DecisionError(
                f"run {state.id} waits for tool call {pending.call_id}, not {decision.call_id}",
                "tool_call_id",
            )
        step = Step("tool", pending.call_id, pending.name, pending.arguments)
        if pending.kind == "output":
            if decision.output is None:
                raise DecisionError(f"tool call {pending.call_id} is the caller's: send its output", "output")
            step.output = decision.output
        else:
            if decision.approve is None:
                raise DecisionError(f"tool call {pending.call_id} needs approve: true or false", "approve")
            if decision.approve:
                step.status, step.output = self._run_tool(self._server_tools[pending.name], pending.arguments)
            else:
                step.status = "rejected"
                step.output = "The caller rejected this call" + (
                    f": {decision.reason}" if decision.reason else "."
                )
        state.steps.append(step)
        state.pending = None

    def advance(self, state: RunState) -> None:
        """Search and decide until the model answers, the steps run out, or a call pauses the run."""
        if state.pending is not None:
            return
        if not state.steps:
            self._do_search(state, state.call_id(), state.question, [])
        while state.decisions < self._settings.max_steps:
            state.decisions += 1
            name, arguments = self._next(state)
            if name == "answer":
                return
            call_id = state.call_id()
            if name == "search":
                query = str(arguments.get("query", "")).strip()
                done = {_norm(s.arguments.get("query", "")) for s in state.steps if s.kind == "search"}
                if not query or _norm(query) in done:
                    return  # the same search finds nothing new
                filters = [str(f) for f in arguments.get("filters") or []]
                self._do_search(state, call_id, query, filters)
            elif (tool := self._server_tools.get(name)) is not None:
                if tool.requires_approval:
                    state.pending = Pending("approval", call_id, name, arguments)
                    return
                status, output = self._run_tool(tool, arguments)
                state.steps.append(Step("tool", call_id, name, arguments, status, output))
            else:  # the caller's tool
                state.pending = Pending("output", call_id, name, arguments)
                return

    # -- the parts ---------------------------------------------------------------------------

    def _do_search(self, state: RunState, call_id: str, query: str, filters: list[str]) -> None:
        arguments: dict[str, Any] = {"query": query}
        if filters:
            arguments["filters"] = filters
        step = Step("search", call_id, "search", arguments)
        try:
            parse_filters(filters)  # the model's filters: a bad one is its step's failure, not the run's
        except InvalidFilter as e:
            step.status, step.output = "failed", str(e)
        else:
            step.hits = self._search(query, [*state.filters, *filters])
        state.steps.append(step)

    def _run_tool(
        self, tool: ServerToolSettings, arguments: dict[str, Any]
    ) -> tuple[Literal["done", "failed"], str]:
        return self._runner.run(tool, arguments)

    def _functions(self, state: RunState) -> list[dict[str, Any]]:
        functions = [SEARCH_TOOL, ANSWER_TOOL]
        functions += [
            {"name": t.name, "description": t.description, "parameters": t.parameters}
            for t in self._server_tools.values()
        ]
        functions += [dict(t["function"]) for t in state.caller_tools]
        return functions

    def _next(self, state: RunState) -> tuple[str, dict[str, Any]]:
        """The model's next call (``answer`` when what it wrote is no call: cut at the token cap)."""
        calling = tools.plan(
            [{"type": "function", "function": f} for f in self._functions(state)], "required"
        )
        assert calling is not None
        messages = tools.with_system(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": step_prompt(state)}],
            calling.system,
        )
        completion = self._llm.chat(
            messages,
            max_tokens=self._settings.step_max_tokens,
            temperature=0.0,
            response_format=calling.response_format,
        )
        state.prompt_tokens += completion.prompt_tokens
        state.completion_tokens += completion.completion_tokens
        reply = tools.read(completion.text)
        if not reply.tool_calls:
            return "answer", {}
        function = reply.tool_calls[0]["function"]
        try:
            arguments = json.loads(function["arguments"])
        except ValueError:
            arguments = {}
        return function["name"], arguments if isinstance(arguments, dict) else {}


def step_prompt(state: RunState) -> str:
    """A step's view of the run: the question, the sources so far (shortened), the searches and
    tool results."""
    lines = [f"Question: {state.question}", "", "Sources found so far:"]
    hits = sources(state)
    if not hits:
        lines.append("(none)")
    for i, h in enumerate(hits, start=1):
        text = " ".join(h.text.split())
        lines.append(f"[{i}] {text[:STEP_SOURCE_CHARS]}")
    searches = [s.arguments.get("query", "") for s in state.steps if s.kind == "search"]
    lines += ["", "Searches done: " + "; ".join(json.dumps(q, ensure_ascii=False) for q in searches)]
    if results := notes(state):
        lines += ["", "Tool results:", *(f"- {n}" for n in results)]
    lines += ["", "What is the next step?"]
    return "\n".join(lines)


def sources(state: RunState) -> list[Hit]:
    """Every search's chunks, interleaved by rank (each step's best first), each chunk once."""
    lists = [s.hits for s in state.steps if s.kind == "search"]
    seen: set[str] = set()
    out: list[Hit] = []
    for rank in range(max((len(h) for h in lists), default=0)):
        for hits in lists:
            if rank < len(hits) and hits[rank].chunk_id not in seen:
                seen.add(hits[rank].chunk_id)
                out.append(hits[rank])
    return out


def notes(state: RunState) -> list[str]:
    """The tool steps' results, for the prompt."""
    return [
        f"{s.name}({json.dumps(s.arguments, ensure_ascii=False)}): {s.output}"
        for s in state.steps
        if s.kind == "tool"
    ]


def usage_of(state: RunState) -> Usage:
    return Usage(prompt_tokens=state.prompt_tokens, completion_tokens=state.completion_tokens)


def _norm(query: Any) -> str:
    return " ".join(str(query).lower().split())


class ToolRunner:
    """Calls server tools: the arguments POSTed as JSON, the reply's text the result. A failure
    (refused connection, timeout, an error status) is the step's result, told to the model."""

    def run(
        self, tool: ServerToolSettings, arguments: dict[str, Any]
    ) -> tuple[Literal["done", "failed"], str]:
        http = require("httpx", extra=TOOLS_EXTRA, feature=TOOLS_FEATURE)
        headers = {k: v.get_secret_value() for k, v in tool.headers.items()}
        try:
            with http.Client() as client:
                resp: httpx.Response = client.post(
                    tool.url, json=arguments, headers=headers, timeout=tool.timeout_s
                )
        except http.TimeoutException:
            return "failed", f"error: the tool did not answer within {tool.timeout_s:g} s"
        except http.HTTPError as e:
            return "failed", f"error: the tool could not be reached ({type(e).__name__})"
        text = resp.text[: tool.max_output_chars]
        if resp.status_code >= 400:
            return "failed", f"error: the tool answered HTTP {resp.status_code}: {text[:200]}"
        return "done", text
