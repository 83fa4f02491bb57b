"""LangChain's ``ChatOpenAI`` against the embedded model of one real `ragline serve`: tools
(``bind_tools``, forced, streamed, and a second turn with the tool's result) and structured
output (``with_structured_output``, as a JSON schema and as a function call, streamed or not).

The embedded model (SmolLM2-135M) is tiny: these check structure (the right tool, arguments and
answers that validate against their schemas), not the quality of what it says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from conftest import ragline_server

WEATHER = [HumanMessage("What is the weather in Oslo? Use the weather tool.")]
PERSON = [HumanMessage("Give a person with a name and an age.")]


class Weather(BaseModel):
    """The weather in a city."""

    city: str = Field(description="The city's name")


class Person(BaseModel):
    """A person."""

    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=150)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server; no response cache, so a streamed answer is generated, not replayed whole."""
    tmp = tmp_path_factory.mktemp("langchain")
    config = {"llm": {"max_tokens": 64, "threads": 1}, "cache": {"enabled": False}}
    (tmp / "ragline.yaml").write_text(yaml.safe_dump(config))
    with ragline_server(tmp / "data", {"RAGLINE_CONFIG": str(tmp / "ragline.yaml")}) as url:
        yield url


@pytest.fixture
def llm(base: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=base + "/v1",
        api_key="unused",
        model="local",
        temperature=0,
        max_tokens=60,
        max_retries=0,
        timeout=120,
    )


def _weather_call(message: AIMessage) -> dict[str, Any]:
    (call,) = message.tool_calls
    assert call["name"] == "Weather" and str(call["id"]).startswith("call_"), call
    Weather.model_validate(call["args"])
    return dict(call)


@pytest.mark.parametrize("tool_choice", ["Weather", "any"])
def test_bind_tools_with_a_forced_call(llm: ChatOpenAI, tool_choice: str) -> None:
    message = llm.bind_tools([Weather], tool_choice=tool_choice).invoke(WEATHER)
    assert isinstance(message, AIMessage)
    _weather_call(message)
    assert message.response_metadata["finish_reason"] == "tool_calls"


def test_bind_tools_streamed(llm: ChatOpenAI) -> None:
    chunks = list(llm.bind_tools([Weather], tool_choice="Weather").stream(WEATHER))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    # the arguments come in pieces as the model writes them
    pieces = [t for c in chunks if isinstance(c, AIMessageChunk) for t in c.tool_call_chunks if t.get("args")]
    assert len(pieces) > 1, pieces
    whole: Any = chunks[0]
    for c in chunks[1:]:
        whole = whole + c
    _weather_call(whole)


def test_a_second_turn_with_the_tools_result(llm: ChatOpenAI) -> None:
    tooled = llm.bind_tools([Weather])
    first = llm.bind_tools([Weather], tool_choice="Weather").invoke(WEATHER)
    assert isinstance(first, AIMessage)
    call = _weather_call(first)
    history: list[BaseMessage] = [*WEATHER, first, ToolMessage("Rain, 8 degrees.", tool_call_id=call["id"])]
    answer = tooled.invoke(history)
    assert isinstance(answer, AIMessage)
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
    if answer.tool_calls:  # auto: another call or an answer, both well formed
        _weather_call(answer)
    else:
        assert isinstance(answer.content, str)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output(llm: ChatOpenAI, method: str) -> None:
    person = llm.with_structured_output(Person, method=method).invoke(PERSON)  # type: ignore[arg-type]
    assert isinstance(person, Person)


# LangChain's own chunk (its ``parsed`` field typed None) warns when it holds the model instance
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_streamed(llm: ChatOpenAI, method: str) -> None:
    parts = list(llm.with_structured_output(Person, method=method).stream(PERSON))  # type: ignore[arg-type]
    assert parts and isinstance(parts[-1], Person)
    Person.model_validate(parts[-1].model_dump())
