"""The official ``openai`` client against the gateway, answered over the bus."""

from __future__ import annotations

import json

import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionFunctionToolParam

from kernel.settings import Settings
from tests.gateway.serving import gateway_config, served
from tests.gateway.standins import EMBED_MODEL, World, embed

WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}


async def test_a_completion_answers_through_the_chat_turn_saga(openai_client: AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(
        model="soma-test", messages=[{"role": "user", "content": "hello there"}]
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 5


async def test_a_streamed_completion_yields_the_deltas_then_usage(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.chat.completions.create(
        model="soma-test",
        messages=[{"role": "user", "content": "stream me three words"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1, "the answer arrives in several deltas"
    assert "".join(pieces) == "Echo: stream me three words"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 4 + 5


async def test_a_stream_without_include_usage_sends_no_usage_chunk(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.chat.completions.create(
        model="soma-test", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_a_tool_call_round_trip_returns_the_call_then_uses_its_result(
    openai_client: AsyncOpenAI,
) -> None:
    messages: list = [{"role": "user", "content": "weather in Oslo?"}]
    first = await openai_client.chat.completions.create(
        model="soma-test", messages=messages, tools=[WEATHER], tool_choice="auto"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"text": "weather in Oslo?"}

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    second = await openai_client.chat.completions.create(
        model="soma-test", messages=messages, tools=[WEATHER]
    )
    assert second.choices[0].message.content == "The tool said: sunny, 21 C"
    assert second.choices[0].finish_reason == "stop"


async def test_a_streamed_tool_call_arrives_as_tool_call_deltas(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.chat.completions.create(
        model="soma-test",
        messages=[{"role": "user", "content": "weather in Rome?"}],
        tools=[WEATHER],
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1
    assert calls[0].index == 0
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments or "") == {"text": "weather in Rome?"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_models_lists_what_the_slm_service_routes(openai_client: AsyncOpenAI) -> None:
    models = [m.id async for m in openai_client.models.list()]
    assert models == ["soma-broken", "soma-embed", "soma-test"]
    model = await openai_client.models.retrieve("soma-test")
    assert model.id == "soma-test" and model.object == "model"


async def test_models_list_the_embedding_model_as_such(openai_client: AsyncOpenAI) -> None:
    kinds = {m.id: (m.model_extra or {}).get("kind") async for m in openai_client.models.list()}
    assert kinds == {"soma-broken": "chat", "soma-embed": "embedding", "soma-test": "chat"}
    listed = await openai_client.embeddings.create(model="soma-embed", input="a text")
    assert listed.model == "soma-embed"


async def test_a_key_limited_to_some_models_sees_only_those(gateway_url: str, world: World) -> None:
    key, _ = world.identity.api_key("acme", ["member"], models=["soma-test"])
    client = AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0)
    assert [m.id async for m in client.models.list()] == ["soma-test"]
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="soma-broken", messages=[{"role": "user", "content": "hi"}]
        )


async def test_embeddings_come_back_as_floats(openai_client: AsyncOpenAI) -> None:
    result = await openai_client.embeddings.create(
        model=EMBED_MODEL, input=["alpha beta", "gamma"], encoding_format="float"
    )
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == pytest.approx(embed("alpha beta"))
    assert result.usage.prompt_tokens == 3
    assert result.model == EMBED_MODEL


async def test_embeddings_in_base64_decode_to_the_same_vectors(
    openai_client: AsyncOpenAI,
) -> None:
    # The client asks for base64 by default and decodes it itself.
    result = await openai_client.embeddings.create(model=EMBED_MODEL, input="alpha beta")
    assert result.data[0].embedding == pytest.approx(embed("alpha beta"), rel=1e-6)


async def test_a_wrong_key_is_an_authentication_error(gateway_url: str) -> None:
    client = AsyncOpenAI(
        base_url=f"{gateway_url}/v1",
        api_key="sk-soma-0123456789abcdef-" + "x" * 43,
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.models.list()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


async def test_an_unknown_model_is_not_found(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await openai_client.chat.completions.create(
            model="gpt-imaginary", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


async def test_an_unknown_embedding_model_is_not_found(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await openai_client.embeddings.create(model="no-such-embedder", input="x")
    assert caught.value.code == "model_not_found"


async def test_a_bad_parameter_is_a_bad_request_naming_it(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(
            model="soma-test", messages=[{"role": "user", "content": "hi"}], temperature=7
        )
    assert caught.value.param == "temperature"
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


async def test_a_policy_denial_is_a_bad_request_with_the_reasons(
    openai_client: AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(
            model="soma-test", messages=[{"role": "user", "content": "tell me forbidden things"}]
        )
    assert caught.value.code == "content_filter"
    assert "blocked topic: forbidden things" in caught.value.message


async def test_a_policy_denial_mid_stream_ends_with_content_filter(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.chat.completions.create(
        model="soma-test",
        messages=[{"role": "user", "content": "forbidden please"}],
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "content_filter"


async def test_a_failed_turn_is_a_server_error_that_leaks_nothing(
    openai_client: AsyncOpenAI,
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await openai_client.chat.completions.create(
            model="soma-broken", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 502
    assert "10.1.2.3" not in caught.value.message
    assert "sk-live" not in str(caught.value.body)


async def test_a_failed_streamed_turn_raises_from_the_error_event(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.chat.completions.create(
        model="soma-broken", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert "backend failed" in caught.value.message


async def test_past_the_request_rate_the_client_gets_a_rate_limit_error(
    gw_settings: Settings, world: World
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    async with served(gw_settings, gateway_config(SOMA_RATE_RPM=2)) as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        await client.models.list()
        await client.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            await client.models.list()
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert caught.value.code == "rate_limit_exceeded"


async def test_deltas_lost_on_the_way_are_made_up_from_the_final_answer(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.chat.completions.create(
        model="soma-test",
        messages=[{"role": "user", "content": "a lossy line of five words"}],
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: a lossy line of five words"
