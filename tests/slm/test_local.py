"""The local development model: offline, plainly labelled, streaming, and able to call tools."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from bus.errors import Rejected
from handlers.slm.models import DEFAULT_FILE, parse_models
from handlers.slm.providers.local import MARKER
from handlers.slm.routing import Router
from handlers.slm.service import providers
from schemas.slm import ChatMessage, SlmComplete, SlmCompleted, SlmDelta, ToolSpec

CALCULATOR = ToolSpec(
    name="calculator",
    description="Evaluate an arithmetic expression",
    parameters={
        "type": "object",
        "properties": {
            "expression": {"type": "string", "minLength": 1},
            "precision": {"type": "integer", "minimum": 2, "maximum": 10},
        },
        "required": ["expression", "precision"],
        "additionalProperties": False,
    },
)
SEARCH = ToolSpec(
    name="web_search",
    description="Search the web",
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "freshness": {"enum": ["day", "week", "month"]},
            "limit": {"type": "integer", "exclusiveMinimum": 0, "default": 5},
        },
        "required": ["query", "freshness", "limit"],
    },
)


@pytest.fixture
def local() -> Router:
    # The shipped model list, with no keys in the environment: only the local model is there.
    return Router(parse_models(DEFAULT_FILE.read_bytes(), {}), providers())


def ask(*messages: ChatMessage, **fields: Any) -> SlmComplete:
    return SlmComplete(model="soma-local-dev", messages=list(messages), **fields)


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


async def streamed(router: Router, request: SlmComplete) -> tuple[SlmCompleted, list[SlmDelta]]:
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    return await router.complete(request, collect), deltas


async def test_the_local_model_needs_no_key_and_says_what_it_is(local):
    done = await local.complete(ask(user("Hello")))

    assert done.provider == "local"
    assert done.model == "soma-local-dev"
    assert done.message.content.startswith(MARKER)


async def test_the_reply_streams_in_several_deltas_that_add_up_to_it(local):
    done, deltas = await streamed(local, ask(user("Tell me about the harbour")))

    pieces = [d.content for d in deltas if d.content]
    assert len(pieces) >= 3
    assert "".join(pieces) == done.message.content
    assert [d.index for d in deltas] == list(range(len(deltas)))
    assert deltas[-1].done and deltas[-1].finish_reason == "stop"


async def test_the_reply_uses_the_prompt_and_the_recalled_memories(local):
    done = await local.complete(
        ask(
            ChatMessage(role="system", content="Memory: the user's dog is called Biscuit."),
            user("What is my dog called?"),
        )
    )

    assert "What is my dog called?" in done.message.content
    assert "the user's dog is called Biscuit" in done.message.content


async def test_usage_is_counted_approximately_and_costs_nothing(local):
    short = await local.complete(ask(user("Hi")))
    long = await local.complete(ask(user("Hi " * 400)))

    assert short.usage.prompt_tokens > 0 and short.usage.completion_tokens > 0
    assert long.usage.prompt_tokens > short.usage.prompt_tokens + 250
    assert short.cost_usd == 0.0


async def test_a_required_tool_is_called_with_schema_valid_arguments(local):
    done, deltas = await streamed(
        local, ask(user("What is (12 + 30) * 2?"), tools=[CALCULATOR], tool_choice="required")
    )

    assert done.finish_reason == "tool_calls"
    [call] = done.message.tool_calls or []
    assert call.name == "calculator"
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, CALCULATOR.parameters)
    assert arguments["expression"] == "(12 + 30) * 2"
    assert [d.tool_call for d in deltas if d.tool_call] == [call]
    assert deltas[-1].finish_reason == "tool_calls"


async def test_a_named_tool_choice_calls_that_tool(local):
    named = {"type": "function", "function": {"name": "web_search"}}

    done = await local.complete(
        ask(user("Latest news this week"), tools=[CALCULATOR, SEARCH], tool_choice=named)
    )

    [call] = done.message.tool_calls or []
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, SEARCH.parameters)
    assert call.name == "web_search"
    assert arguments == {"query": "Latest news this week", "freshness": "week", "limit": 5}


async def test_naming_an_offered_tool_in_the_prompt_calls_it(local):
    done = await local.complete(
        ask(user("Use web search to find the tide tables"), tools=[CALCULATOR, SEARCH])
    )

    assert [call.name for call in done.message.tool_calls] == ["web_search"]


async def test_without_a_reason_to_call_a_tool_it_answers(local):
    done = await local.complete(ask(user("Good morning"), tools=[CALCULATOR, SEARCH]))

    assert done.message.tool_calls is None
    assert done.finish_reason == "stop"


async def test_tool_choice_none_never_calls_a_tool(local):
    done = await local.complete(
        ask(user("Use the calculator on 2+2"), tools=[CALCULATOR], tool_choice="none")
    )

    assert done.message.tool_calls is None


async def test_a_named_tool_that_was_not_offered_is_rejected(local):
    named = {"type": "function", "function": {"name": "delete_everything"}}

    with pytest.raises(Rejected, match="delete_everything"):
        await local.complete(ask(user("hi"), tools=[CALCULATOR], tool_choice=named))


async def test_after_a_tool_result_it_answers_with_the_result(local):
    question = ask(user("What is 6 * 7?"), tools=[CALCULATOR], tool_choice="required")
    first = await local.complete(question)
    [call] = first.message.tool_calls or []
    result = ChatMessage(role="tool", tool_call_id=call.id, content="42")

    done, deltas = await streamed(
        local,
        ask(*question.messages, first.message, result, tools=[CALCULATOR], tool_choice="required"),
    )

    assert done.message.tool_calls is None
    assert done.finish_reason == "stop"
    assert "The calculator tool returned: 42" in (done.message.content or "")
    assert "".join(d.content for d in deltas) == done.message.content


async def test_a_redelivered_request_calls_the_tool_with_the_same_call_id(local):
    request = ask(user("What is 6 * 7?"), tools=[CALCULATOR], tool_choice="required")

    first = await local.complete(request)
    again = await local.complete(request)

    assert first.message.tool_calls[0].id == again.message.tool_calls[0].id


async def test_max_tokens_truncates_the_reply_but_keeps_the_label(local):
    done = await local.complete(ask(user("word " * 200), max_tokens=10))

    assert done.finish_reason == "length"
    assert done.message.content.startswith(MARKER)
    assert len(done.message.content) < 300


async def test_a_json_object_response_format_returns_json(local):
    done = await local.complete(ask(user("hi"), response_format={"type": "json_object"}))

    assert json.loads(done.message.content)["reply"].startswith(MARKER)


async def test_the_text_ends_before_the_first_stop_sequence_and_names_it(local):
    done = await local.complete(ask(user("Tell me more"), stop=["Tell", "asked"]))

    assert done.finish_reason == "stop"
    assert done.stop_sequence == "asked"
    assert done.message.content.startswith(MARKER)
    assert "asked" not in done.message.content and "Tell" not in done.message.content


async def test_a_stop_sequence_in_the_label_cuts_there_too(local):
    done = await local.complete(ask(user("hi"), stop=["local"]))

    assert done.message.content == "[soma "
    assert done.stop_sequence == "local"


@pytest.mark.parametrize("max_tokens", [1, 3, 10, 40])
async def test_never_more_completion_tokens_than_max_tokens_then_length(local, max_tokens):
    done = await local.complete(ask(user("word " * 200), max_tokens=max_tokens))

    assert done.finish_reason == "length"
    assert done.stop_sequence is None
    assert 0 < done.usage.completion_tokens <= max_tokens


async def test_a_tool_is_called_when_the_prompt_uses_the_telling_words_of_its_name(local):
    weather = ToolSpec(
        name="get_weather",
        description="The weather in a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )

    done = await local.complete(ask(user("What is the weather in Paris?"), tools=[weather]))

    assert [call.name for call in done.message.tool_calls or []] == ["get_weather"]
    assert done.finish_reason == "tool_calls"


async def test_a_tool_is_called_when_the_prompt_asks_for_one_unnamed(local):
    done = await local.complete(ask(user("Please use a tool for this"), tools=[SEARCH]))

    assert [call.name for call in done.message.tool_calls or []] == ["web_search"]
