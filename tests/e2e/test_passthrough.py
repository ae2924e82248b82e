"""Pass-through turns (``SOMA_CHAT_PIPELINE=passthrough``) through the official openai client, with
the gateway, identity, slm and analytics as OS processes and a model server speaking OpenAI's
protocol: one command to the slm process and no saga, yet the same answers as a full turn, the
reply in the event trail, usage metered once, and an idempotent retry never a second model call.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import anthropic
import httpx
import msgspec
import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionToolParam,
)

from schemas.slm import SlmCompleted
from tests.e2e.chat_system import MODEL, TENANT, ChatSystem, chat_system
from tests.e2e.trail import ask, events_of, settled_usage, streamed_content, turn_of, usage
from tests.slm.scripted import Reply

PROCESSES = ["identity", "slm", "analytics"]
CALCULATOR: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}


# The durables that must be bound before a turn is sent.
CONSUMERS = [*PROCESSES, "analytics-events"]


@pytest.fixture(scope="module")
async def ready(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChatSystem]:
    data = tmp_path_factory.mktemp("passthrough")
    async with chat_system("passthrough", PROCESSES, CONSUMERS, data) as system:
        yield system


@pytest.fixture
def passthrough(ready: ChatSystem) -> ChatSystem:
    ready.script.reset()
    return ready


async def test_a_passthrough_turn_is_one_model_call_in_the_event_trail_and_no_saga(
    passthrough: ChatSystem,
) -> None:
    passthrough.script.then(Reply(text="Straight from the model.", prompt_tokens=9))
    reply = await passthrough.client().chat.completions.create(
        model=MODEL, messages=ask("Say it plainly.")
    )
    assert reply.choices[0].message.content == "Straight from the model."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens == 9
    assert len(passthrough.script.requests) == 1
    [(kind, event)] = await events_of(passthrough.nats, TENANT, turn_of(reply.id))
    assert kind == "slm.completed"
    completed = msgspec.json.decode(event.data, type=SlmCompleted)
    assert (completed.model, completed.usage.prompt_tokens) == (MODEL, 9)
    assert completed.key_id is not None
    assert completed.cost_usd > 0
    assert event.headers is not None
    assert event.headers["Soma-Actor"] not in ("", "system")  # the caller's user


async def test_a_streamed_passthrough_turn_streams_the_answer_and_ends_with_usage(
    passthrough: ChatSystem,
) -> None:
    passthrough.script.then(Reply(text="Piece by piece it comes.", completion_tokens=6))
    stream = await passthrough.client().chat.completions.create(
        model=MODEL,
        messages=ask("Stream it."),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Piece by piece it comes."
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert passthrough.script.requests[0]["stream"] is True


async def test_a_callers_tool_call_is_handed_back_with_finish_reason_tool_calls(
    passthrough: ChatSystem,
) -> None:
    passthrough.script.then(Reply(tool_calls=[("call_1", "calculator", {"expression": "6*7"})]))
    reply = await passthrough.client().chat.completions.create(
        model=MODEL, messages=ask("Compute 6*7."), tools=[CALCULATOR]
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    [call] = reply.choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert (call.id, call.function.name) == ("call_1", "calculator")
    assert json.loads(call.function.arguments) == {"expression": "6*7"}
    assert passthrough.script.requests[0]["tools"][0]["function"]["name"] == "calculator"


async def test_an_unknown_model_is_the_sdks_not_found_error(passthrough: ChatSystem) -> None:
    with pytest.raises(openai.NotFoundError):
        await passthrough.client().chat.completions.create(model="no-such-model", messages=ask("x"))
    assert passthrough.script.requests == []


async def test_a_passthrough_turn_answers_the_anthropic_sdk_streamed_and_not(
    passthrough: ChatSystem,
) -> None:
    passthrough.script.then(
        Reply(text="Messages API, one hop.", prompt_tokens=8, completion_tokens=5),
        Reply(text="And streamed.", prompt_tokens=9, completion_tokens=3),
    )
    client = anthropic.AsyncAnthropic(
        base_url=passthrough.url, api_key=passthrough.key, max_retries=0, timeout=60
    )
    message = await client.messages.create(model=MODEL, max_tokens=32, messages=ask("Hi"))
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "Messages API, one hop.")
    ]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (8, 5)
    async with client.messages.stream(model=MODEL, max_tokens=32, messages=ask("Hi")) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "And streamed."
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 3)
    assert [r["max_tokens"] for r in passthrough.script.requests] == [32, 32]


async def test_usage_of_passthrough_turns_is_metered_once_per_turn(
    passthrough: ChatSystem,
) -> None:
    model = MODEL
    before = await settled_usage(passthrough.url, passthrough.headers(), model)
    passthrough.script.then(
        Reply(text="one", prompt_tokens=100, completion_tokens=10),
        Reply(text="two", prompt_tokens=200, completion_tokens=20),
    )
    client = passthrough.client()
    for prompt in ("first", "second"):
        await client.chat.completions.create(model=model, messages=ask(prompt))
    async with asyncio.timeout(60):
        while (after := await usage(passthrough.url, passthrough.headers(), model))[
            "requests"
        ] < before["requests"] + 2:
            await asyncio.sleep(0.2)
    await asyncio.sleep(1)  # a double count would land by now
    after = await usage(passthrough.url, passthrough.headers(), model)
    assert after["requests"] - before["requests"] == 2
    assert after["prompt_tokens"] - before["prompt_tokens"] == 300
    assert after["completion_tokens"] - before["completion_tokens"] == 30


async def test_usage_of_passthrough_turns_is_reported_under_the_callers_key(
    passthrough: ChatSystem,
) -> None:
    passthrough.script.then(Reply(text="keyed", prompt_tokens=3))
    await passthrough.client().chat.completions.create(model=MODEL, messages=ask("Whose key?"))
    async with httpx.AsyncClient(base_url=passthrough.url, timeout=30) as client:
        async with asyncio.timeout(60):
            while True:
                answer = await client.get(
                    "/v1/usage", params={"group_by": "key"}, headers=passthrough.headers()
                )
                keys = {r["group"]["key"] for r in answer.json()["data"]}
                if keys - {""}:
                    break
                await asyncio.sleep(0.2)
    assert len(keys - {""}) == 1


async def test_a_streamed_retry_of_an_answered_turn_gets_its_answer_without_a_second_call(
    passthrough: ChatSystem,
) -> None:
    """Streamed answers are not kept by the idempotency record: the retry runs the route again,
    its command is dropped by the bus as a duplicate, and the answer is read back from the trail."""
    passthrough.script.then(Reply(text="Said once, heard twice."))
    key = f"streamed-{uuid.uuid4().hex}"
    body = {"model": MODEL, "messages": ask("Once only."), "stream": True}
    texts = []
    async with httpx.AsyncClient(base_url=passthrough.url, timeout=60) as client:
        for _ in range(2):
            async with client.stream(
                "POST", "/v1/chat/completions", headers=passthrough.headers(key), json=body
            ) as response:
                assert response.status_code == 200
                texts.append((await response.aread()).decode())
    for text in texts:
        assert text.rstrip().endswith("data: [DONE]")
        assert streamed_content(text) == "Said once, heard twice."
    assert len(passthrough.script.requests) == 1


async def test_a_retry_while_the_model_works_gets_the_same_answer_from_one_call(
    passthrough: ChatSystem,
) -> None:
    passthrough.script.then(Reply(text="Worth the wait.", delay=2.0))
    key = f"waiting-{uuid.uuid4().hex}"
    body = {"model": MODEL, "messages": ask("Take your time.")}
    async with httpx.AsyncClient(base_url=passthrough.url, timeout=60) as client:
        first = asyncio.create_task(
            client.post("/v1/chat/completions", headers=passthrough.headers(key), json=body)
        )
        async with asyncio.timeout(30):
            while not passthrough.script.requests:
                await asyncio.sleep(0.05)
        retry = await client.post(
            "/v1/chat/completions", headers=passthrough.headers(key), json=body
        )
        answered = await first
    assert answered.status_code == retry.status_code == 200, retry.text
    assert retry.json() == answered.json()
    assert len(passthrough.script.requests) == 1
