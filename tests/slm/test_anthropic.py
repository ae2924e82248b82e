"""The Anthropic provider, through the official SDK, against a local server speaking its API."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handlers.slm.providers import ProviderError
from schemas.slm import ChatMessage, SlmComplete, SlmDelta, ToolCall, ToolSpec

from .conftest import FakeServer
from .routers import call_provider, router
from .scripted import Reply

LOOKUP = ToolSpec(
    name="lookup_order",
    description="Find an order by id",
    parameters={
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"],
    },
)


@pytest.fixture
def claude(anthropic_server: FakeServer):
    models = f"""
models:
  - name: claude-haiku-4-5
    deployments:
      - {{provider: anthropic, model: claude-haiku-4-5-20251001, api_key_env: ANTHROPIC_API_KEY,
         base_url: "{anthropic_server.base_url}", input_per_1m: 1.0, output_per_1m: 5.0}}
"""
    routed, _ = router(models, {"ANTHROPIC_API_KEY": "sk-ant-test"})
    return routed


def ask(*messages: ChatMessage, **fields: Any) -> SlmComplete:
    return SlmComplete(model="claude-haiku-4-5", messages=list(messages), **fields)


async def test_a_plain_completion_returns_the_text_usage_and_cost(claude, anthropic_server):
    anthropic_server.script.then(Reply("Bonjour.", prompt_tokens=2000, completion_tokens=100))

    done = await claude.complete(ask(ChatMessage(role="user", content="Say hello in French")))

    assert done.message.content == "Bonjour."
    assert done.provider == "anthropic"
    assert done.finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (2000, 100)
    assert done.cost_usd == pytest.approx((2000 * 1.0 + 100 * 5.0) / 1_000_000)
    sent = anthropic_server.script.requests[0]
    assert sent["model"] == "claude-haiku-4-5-20251001"
    assert sent["_api_key"] == "sk-ant-test"
    assert sent["max_tokens"] > 0


async def test_system_messages_travel_apart_from_the_conversation(claude, anthropic_server):
    anthropic_server.script.then(Reply("ok"))

    await claude.complete(
        ask(
            ChatMessage(role="system", content="You are terse."),
            ChatMessage(role="system", content="The user's name is Ada."),
            ChatMessage(role="user", content="Hi"),
        )
    )

    sent = anthropic_server.script.requests[0]
    assert sent["system"] == "You are terse.\n\nThe user's name is Ada."
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


async def test_tools_and_a_required_choice_are_mapped_to_anthropic_form(claude, anthropic_server):
    anthropic_server.script.then(
        Reply(tool_calls=[("toolu_1", "lookup_order", {"order_id": "A7"})])
    )

    done = await claude.complete(
        ask(
            ChatMessage(role="user", content="Where is A7?"), tools=[LOOKUP], tool_choice="required"
        )
    )

    sent = anthropic_server.script.requests[0]
    assert sent["tools"] == [
        {
            "name": "lookup_order",
            "description": "Find an order by id",
            "input_schema": LOOKUP.parameters,
        }
    ]
    assert sent["tool_choice"] == {"type": "any"}
    assert done.finish_reason == "tool_calls"
    assert done.message.tool_calls == [
        ToolCall(id="toolu_1", name="lookup_order", arguments='{"order_id": "A7"}')
    ]


async def test_a_named_tool_choice_becomes_a_tool_choice_of_type_tool(claude, anthropic_server):
    anthropic_server.script.then(
        Reply(tool_calls=[("toolu_1", "lookup_order", {"order_id": "A7"})])
    )
    named = {"type": "function", "function": {"name": "lookup_order"}}

    await claude.complete(
        ask(ChatMessage(role="user", content="A7?"), tools=[LOOKUP], tool_choice=named)
    )

    assert anthropic_server.script.requests[0]["tool_choice"] == {
        "type": "tool",
        "name": "lookup_order",
    }


async def test_tool_calls_and_results_become_tool_use_and_tool_result_blocks(
    claude, anthropic_server
):
    anthropic_server.script.then(Reply("Order A7 ships tomorrow."))
    calls = [
        ToolCall(id="toolu_1", name="lookup_order", arguments='{"order_id": "A7"}'),
        ToolCall(id="toolu_2", name="lookup_order", arguments='{"order_id": "B2"}'),
    ]

    await claude.complete(
        ask(
            ChatMessage(role="user", content="Where are A7 and B2?"),
            ChatMessage(role="assistant", content="Looking them up.", tool_calls=calls),
            ChatMessage(role="tool", tool_call_id="toolu_1", content="ships tomorrow"),
            ChatMessage(role="tool", tool_call_id="toolu_2", content="delivered"),
            tools=[LOOKUP],
        )
    )

    assistant, results = anthropic_server.script.requests[0]["messages"][1:]
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Looking them up."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "lookup_order",
                "input": {"order_id": "A7"},
            },
            {
                "type": "tool_use",
                "id": "toolu_2",
                "name": "lookup_order",
                "input": {"order_id": "B2"},
            },
        ],
    }
    # Consecutive tool results share one user turn, as Anthropic requires alternating roles.
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ships tomorrow"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "delivered"},
        ],
    }


async def test_a_streamed_completion_sends_each_text_delta(claude, anthropic_server):
    anthropic_server.script.then(Reply("Un deux trois.", prompt_tokens=30, completion_tokens=6))
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    done = await claude.complete(ask(ChatMessage(role="user", content="Count")), collect)

    assert [d.content for d in deltas if d.content] == ["Un ", "deux ", "trois."]
    assert deltas[-1].done and deltas[-1].finish_reason == "stop"
    assert done.message.content == "Un deux trois."
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (30, 6)


async def test_streamed_input_json_deltas_are_assembled_into_tool_calls(claude, anthropic_server):
    args = {"order_id": "A7", "fields": ["status", "eta", "carrier"]}
    anthropic_server.script.then(
        Reply("Checking.", tool_calls=[("toolu_9", "lookup_order", args)], completion_tokens=40)
    )
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    done = await claude.complete(
        ask(ChatMessage(role="user", content="A7?"), tools=[LOOKUP]), collect
    )

    expected = ToolCall(id="toolu_9", name="lookup_order", arguments=json.dumps(args))
    assert [d.tool_call for d in deltas if d.tool_call] == [expected]
    assert json.loads(done.message.tool_calls[0].arguments) == args
    assert done.message.content == "Checking."
    assert done.finish_reason == "tool_calls"
    assert done.usage.completion_tokens == 40


async def test_a_streamed_answer_cut_off_midway_is_a_retryable_provider_error(
    claude, anthropic_server
):
    # Two text deltas arrive, then the server drops the connection in the middle of the body.
    anthropic_server.script.then(Reply("Un deux trois quatre.", cut_after=2))
    deployment = claude.models.deployments_for("claude-haiku-4-5")[0]
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    with pytest.raises(ProviderError) as cut:
        await call_provider(
            claude, deployment, ask(ChatMessage(role="user", content="Count")), collect
        )

    assert [d.content for d in deltas] == ["Un ", "deux "]
    assert cut.value.retryable
    assert deployment.label in str(cut.value)
    assert "payload is not completed" in str(cut.value)  # what the transport said


async def test_a_whole_answer_cut_off_midway_is_a_retryable_provider_error(
    claude, anthropic_server
):
    # The headers promise the whole body; 40 bytes of it arrive before the connection drops.
    anthropic_server.script.then(Reply("Bonjour.", cut_after=40))
    deployment = claude.models.deployments_for("claude-haiku-4-5")[0]

    with pytest.raises(ProviderError) as cut:
        await call_provider(claude, deployment, ask(ChatMessage(role="user", content="Hi")))

    assert cut.value.retryable
    assert deployment.label in str(cut.value)
    assert "payload is not completed" in str(cut.value)


@pytest.mark.parametrize(
    "end_after",
    [
        5,  # message_start, ping, the text block's start and two text deltas
        -1,  # everything but message_stop: the message_delta with the stop reason arrived
    ],
    ids=["after-two-deltas", "after-message-delta"],
)
async def test_a_stream_that_ends_cleanly_before_message_stop_is_a_retryable_provider_error(
    claude, anthropic_server, end_after
):
    anthropic_server.script.then(Reply("Un deux trois quatre.", end_after=end_after))
    deployment = claude.models.deployments_for("claude-haiku-4-5")[0]
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    with pytest.raises(ProviderError) as ended:
        await call_provider(
            claude, deployment, ask(ChatMessage(role="user", content="Count")), collect
        )

    assert "".join(d.content or "" for d in deltas).startswith("Un deux ")
    assert ended.value.retryable
    assert deployment.label in str(ended.value)
    assert "the stream ended before the answer did" in str(ended.value)
