"""The official ``anthropic`` SDK pointed at the gateway: messages, streams, tool use, token
counts and errors, on the same chat turn as the OpenAI routes — whichever provider serves the
model — and an Anthropic-served model through the OpenAI route."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam, ToolParam

from tests.slm.scripted import Reply

from .conftest import ANTHROPIC_MODEL, OPENAI_MODEL, Hub

LOCAL = "soma-local-dev"
MARKER = "[soma local dev model]"
CALCULATOR: ToolParam = {
    "name": "calculator",
    "description": "Evaluate an arithmetic expression",
    "input_schema": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
}
# A 1x1 transparent PNG.
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


def image_message(text: str) -> list[MessageParam]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
                },
            ],
        }
    ]


async def test_a_message_runs_the_chat_turn_and_answers_in_anthropics_shape(hub: Hub) -> None:
    message = await hub.anthropic().messages.create(
        model=LOCAL, max_tokens=512, messages=user("Hello from the Anthropic SDK")
    )
    assert (message.type, message.role, message.model) == ("message", "assistant", LOCAL)
    assert message.id.startswith("msg_")
    [block] = message.content
    assert block.type == "text" and MARKER in block.text
    assert "Hello from the Anthropic SDK" in block.text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


async def test_the_system_prompt_reaches_the_model_as_its_context(hub: Hub) -> None:
    message = await hub.anthropic().messages.create(
        model=LOCAL,
        max_tokens=512,
        system=[{"type": "text", "text": "Answer like a lighthouse keeper."}],
        messages=user("How is the sea?"),
    )
    [block] = message.content
    assert block.type == "text" and "Answer like a lighthouse keeper." in block.text


async def test_a_streamed_message_gives_the_text_and_a_final_message_with_usage(
    hub: Hub,
) -> None:
    async with hub.anthropic().messages.stream(
        model=LOCAL, max_tokens=512, messages=user("Stream it to me")
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert MARKER in text and "Stream it to me" in text
    [block] = final.content
    assert block.type == "text" and block.text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


async def test_a_stream_sends_anthropics_events_in_their_order(hub: Hub) -> None:
    body = {"model": LOCAL, "max_tokens": 256, "stream": True, "messages": user("In order")}
    headers = {"x-api-key": hub.key, "anthropic-version": "2023-06-01"}
    names = []
    async with (
        httpx.AsyncClient(base_url=hub.url, timeout=60) as client,
        client.stream("POST", "/v1/messages", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


async def test_a_tool_use_round_trip_continues_the_conversation(hub: Hub) -> None:
    client = hub.anthropic()
    messages = user("Compute 6*7 with the calculator")
    first = await client.messages.create(
        model=LOCAL, max_tokens=512, messages=messages, tools=[CALCULATOR],
        tool_choice={"type": "any"},
    )  # fmt: skip
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "calculator" and isinstance(call.input, dict)
    messages = [
        *messages,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "42"}],
        },
    ]
    second = await client.messages.create(
        model=LOCAL, max_tokens=512, messages=messages, tools=[CALCULATOR]
    )
    assert second.stop_reason == "end_turn"
    [block] = second.content
    assert block.type == "text" and "The calculator tool returned: 42" in block.text


async def test_a_streamed_tool_use_arrives_as_input_json_deltas(hub: Hub) -> None:
    async with hub.anthropic().messages.stream(
        model=LOCAL,
        max_tokens=512,
        messages=user("Use the calculator on 2+2"),
        tools=[CALCULATOR],
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert "input_json" in kinds
    assert final.stop_reason == "tool_use"
    [call] = final.content
    assert call.type == "tool_use" and call.name == "calculator"
    assert isinstance(call.input, dict) and "expression" in call.input


async def test_the_text_ends_before_a_stop_sequence_and_names_it(hub: Hub) -> None:
    message = await hub.anthropic().messages.create(
        model=LOCAL, max_tokens=512, messages=user("Cut me short"), stop_sequences=["asked"]
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "asked"
    [block] = message.content
    assert block.type == "text" and "asked" not in block.text and "Cut me short" not in block.text


async def test_max_tokens_caps_the_answer_with_stop_reason_max_tokens(hub: Hub) -> None:
    message = await hub.anthropic().messages.create(
        model=LOCAL, max_tokens=8, messages=user("Say a great deal about everything")
    )
    assert message.stop_reason == "max_tokens"
    assert 0 < message.usage.output_tokens <= 8


async def test_count_tokens_counts_the_prompt_and_grows_with_it(hub: Hub) -> None:
    client = hub.anthropic()
    short = await client.messages.count_tokens(model=LOCAL, messages=user("Hi"))
    longer = await client.messages.count_tokens(
        model=LOCAL, system="Be brief.", messages=user("Hi " * 100), tools=[CALCULATOR]
    )
    assert 0 < short.input_tokens < longer.input_tokens


async def test_a_bad_key_is_the_sdks_authentication_error(hub: Hub) -> None:
    stranger = hub.anthropic(key="sk-soma-0000000000000000-nope")
    with pytest.raises(anthropic.AuthenticationError) as raised:
        await stranger.messages.create(model=LOCAL, max_tokens=16, messages=user("x"))
    assert raised.value.status_code == 401
    body: Any = raised.value.body
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert "API key" in body["error"]["message"]


async def test_an_unknown_model_is_the_sdks_not_found_error(hub: Hub) -> None:
    with pytest.raises(anthropic.NotFoundError, match="no-such-model"):
        await hub.anthropic().messages.create(
            model="no-such-model", max_tokens=16, messages=user("x")
        )
    with pytest.raises(anthropic.NotFoundError):
        await hub.anthropic().messages.count_tokens(model="no-such-model", messages=user("x"))


async def test_an_invalid_request_is_the_sdks_bad_request_error(hub: Hub) -> None:
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        await hub.anthropic().messages.create(
            model=LOCAL, max_tokens=16, messages=user("x"), extra_body={"temperature": 1.5}
        )


async def test_errors_have_anthropics_shape_and_a_missing_max_tokens_is_named(hub: Hub) -> None:
    async with httpx.AsyncClient(base_url=hub.url, timeout=60) as client:
        response = await client.post(
            "/v1/messages",
            json={"model": LOCAL, "messages": user("x")},
            headers={"x-api-key": hub.key},
        )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


async def test_the_openai_routes_keep_openais_error_shape(hub: Hub) -> None:
    async with httpx.AsyncClient(base_url=hub.url, timeout=60) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "no-such-model", "messages": user("x")},
            headers={"x-api-key": hub.key},
        )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_an_image_to_a_model_without_images_is_refused_naming_the_model(hub: Hub) -> None:
    with pytest.raises(anthropic.BadRequestError, match=LOCAL):
        await hub.anthropic().messages.create(
            model=LOCAL, max_tokens=16, messages=image_message("What is this?")
        )


async def test_a_message_to_an_openai_served_model_goes_through_its_provider(hub: Hub) -> None:
    hub.upstreams.openai.then(Reply(text="Hello from upstream.", prompt_tokens=13))
    message = await hub.anthropic().messages.create(
        model=OPENAI_MODEL,
        max_tokens=64,
        system="Be kind.",
        messages=image_message("Describe the picture"),
        stop_sequences=["END"],
    )
    [block] = message.content
    assert block.type == "text" and block.text == "Hello from upstream."
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 13
    [sent] = hub.upstreams.openai.requests
    assert sent["max_tokens"] == 64 and sent["stop"] == ["END"]
    # Memory adds what it recalls as context of its own; the caller's system prompt stays.
    assert {"role": "system", "content": "Be kind."} in sent["messages"]
    parts = sent["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "Describe the picture"}
    assert parts[1]["image_url"]["url"] == f"data:image/png;base64,{PIXEL}"


async def test_an_openai_served_models_tool_call_comes_back_as_tool_use(hub: Hub) -> None:
    hub.upstreams.openai.then(Reply(tool_calls=[("call_7", "calculator", {"expression": "6*7"})]))
    message = await hub.anthropic().messages.create(
        model=OPENAI_MODEL,
        max_tokens=64,
        messages=user("Compute 6*7"),
        tools=[CALCULATOR],
        tool_choice={"type": "tool", "name": "calculator", "disable_parallel_tool_use": True},
    )
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == ("call_7", "calculator", {"expression": "6*7"})
    [sent] = hub.upstreams.openai.requests
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "calculator"}}
    assert sent["parallel_tool_calls"] is False


async def test_a_message_to_an_anthropic_served_model_keeps_its_blocks(hub: Hub) -> None:
    hub.upstreams.anthropic.then(Reply(text="Straight from Claude.", completion_tokens=5))
    async with hub.anthropic().messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=image_message("What is this?")
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Straight from Claude."
    assert final.usage.output_tokens == 5
    [sent] = hub.upstreams.anthropic.requests
    blocks: list[dict[str, Any]] = sent["messages"][0]["content"]
    assert {"type": "text", "text": "What is this?"} in blocks
    [image] = [b for b in blocks if b["type"] == "image"]
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": PIXEL}


async def test_an_anthropic_served_model_answers_the_openai_route(hub: Hub) -> None:
    hub.upstreams.anthropic.then(Reply(text="Claude via chat completions.", prompt_tokens=21))
    reply = await hub.openai().chat.completions.create(
        model=ANTHROPIC_MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        max_tokens=32,
    )
    assert reply.choices[0].message.content == "Claude via chat completions."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens == 21
    [sent] = hub.upstreams.anthropic.requests
    assert sent["system"].endswith("Be brief.") and sent["max_tokens"] == 32


async def test_an_anthropic_served_tool_call_comes_back_to_the_openai_route(hub: Hub) -> None:
    hub.upstreams.anthropic.then(
        Reply(tool_calls=[("toolu_1", "calculator", {"expression": "2+2"})])
    )
    reply = await hub.openai().chat.completions.create(
        model=ANTHROPIC_MODEL,
        messages=[{"role": "user", "content": "Add 2 and 2"}],
        tools=[{"type": "function", "function": {
            "name": "calculator", "parameters": CALCULATOR["input_schema"]}}],
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "tool_calls"
    [call] = reply.choices[0].message.tool_calls or []
    assert call.id == "toolu_1"
    assert json.loads(call.function.arguments) == {"expression": "2+2"}  # type: ignore[union-attr]


async def test_models_list_the_embedding_model_beside_the_chat_models(hub: Hub) -> None:
    models = [model async for model in hub.openai().models.list()]
    kinds = {model.id: (model.model_extra or {}).get("kind") for model in models}
    assert kinds[LOCAL] == kinds[OPENAI_MODEL] == "chat"
    [embedding] = [name for name, kind in kinds.items() if kind == "embedding"]
    vectors = await hub.openai().embeddings.create(model=embedding, input=["one text"])
    assert len(vectors.data[0].embedding) > 0


async def test_a_chat_naming_the_embedding_model_is_told_it_is_one(hub: Hub) -> None:
    models = [model async for model in hub.openai().models.list()]
    [embedding] = [m.id for m in models if (m.model_extra or {}).get("kind") == "embedding"]
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        await hub.openai().chat.completions.create(
            model=embedding, messages=[{"role": "user", "content": "x"}]
        )


async def test_an_image_url_part_reaches_a_model_that_accepts_images(hub: Hub) -> None:
    hub.upstreams.openai.then(Reply(text="A pixel."))
    url = "https://example.com/cat.png"
    reply = await hub.openai().chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is it?"},
            {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
        ]}],
    )  # fmt: skip
    assert reply.choices[0].message.content == "A pixel."
    [sent] = hub.upstreams.openai.requests
    assert sent["messages"][-1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": url, "detail": "low"},
    }


async def test_an_image_url_part_to_a_model_without_images_is_a_400_naming_it(hub: Hub) -> None:
    with pytest.raises(openai.BadRequestError, match=LOCAL):
        await hub.openai().chat.completions.create(
            model=LOCAL,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
            ]}],
        )  # fmt: skip


async def test_more_than_one_choice_is_refused_with_a_clear_400(hub: Hub) -> None:
    with pytest.raises(openai.BadRequestError, match="'n'"):
        await hub.openai().chat.completions.create(
            model=LOCAL, messages=[{"role": "user", "content": "x"}], n=2
        )


async def test_logprobs_and_a_json_schema_are_passed_to_an_openai_provider(hub: Hub) -> None:
    hub.upstreams.openai.then(Reply(text='{"answer": 42}'))
    schema = {"name": "answer", "schema": {"type": "object"}, "strict": True}
    reply = await hub.openai().chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "Answer in JSON"}],
        logprobs=True,
        top_logprobs=2,
        parallel_tool_calls=False,
        tools=[{"type": "function", "function": {"name": "calculator"}}],
        response_format={"type": "json_schema", "json_schema": schema},
    )
    [sent] = hub.upstreams.openai.requests
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    scored = reply.choices[0].logprobs
    assert scored is not None and scored.content is not None
    assert "".join(t.token for t in scored.content) == '{"answer": 42}'
    assert sent["parallel_tool_calls"] is False
    assert sent["response_format"] == {"type": "json_schema", "json_schema": schema}


async def test_a_streamed_answer_ends_with_its_logprobs(hub: Hub) -> None:
    hub.upstreams.openai.then(Reply(text="Scored word by word."))
    stream = await hub.openai().chat.completions.create(
        model=OPENAI_MODEL,
        messages=[{"role": "user", "content": "Score it"}],
        logprobs=True,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1].choices[0]
    assert last.finish_reason == "stop"
    assert last.logprobs is not None and last.logprobs.content is not None
    assert "".join(t.token for t in last.logprobs.content) == "Scored word by word."


async def test_top_logprobs_without_logprobs_is_a_400(hub: Hub) -> None:
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        await hub.openai().chat.completions.create(
            model=LOCAL, messages=[{"role": "user", "content": "x"}], top_logprobs=2
        )


async def test_metadata_naming_another_user_is_the_sdks_permission_error(hub: Hub) -> None:
    with pytest.raises(anthropic.PermissionDeniedError, match=r"metadata\.user_id"):
        await hub.anthropic().messages.create(
            model=LOCAL,
            max_tokens=16,
            messages=user("x"),
            metadata={"user_id": "someone-else"},
        )


async def test_a_tool_result_without_its_id_is_refused_naming_the_block(hub: Hub) -> None:
    messages: list[MessageParam] = [
        {"role": "user", "content": [{"type": "tool_result", "content": "42"}]}  # type: ignore[list-item, typeddict-item]
    ]
    with pytest.raises(anthropic.BadRequestError, match=r"messages\[0\]\.content\[0\]"):
        await hub.anthropic().messages.create(model=LOCAL, max_tokens=16, messages=messages)


async def test_a_tool_result_answering_no_tool_use_is_refused(hub: Hub) -> None:
    messages: list[MessageParam] = [
        {"role": "user", "content": "Compute 6*7"},
        {"role": "assistant", "content": "I will not call a tool."},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_unknown", "content": "42"},
        ]},
    ]  # fmt: skip
    with pytest.raises(anthropic.BadRequestError, match="toolu_unknown"):
        await hub.anthropic().messages.create(model=LOCAL, max_tokens=16, messages=messages)


async def test_a_message_without_content_is_refused(hub: Hub) -> None:
    with pytest.raises(anthropic.BadRequestError, match=r"messages\[0\]\.content"):
        await hub.anthropic().messages.create(
            model=LOCAL, max_tokens=16, messages=[{"role": "user", "content": []}]
        )
