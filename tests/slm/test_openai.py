"""The OpenAI provider, through the official SDK, against a local server speaking its API."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handlers.slm.providers import ProviderError
from schemas.slm import ChatMessage, SlmComplete, SlmDelta, ToolCall, ToolSpec

from .conftest import FakeServer
from .routers import call_provider, router
from .scripted import Reply

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


def openai_models(base_url: str, price_in: float = 0.15, price_out: float = 0.60) -> str:
    return f"""
models:
  - name: gpt-4o-mini
    deployments:
      - {{provider: openai, model: gpt-4o-mini-2024-07-18, api_key_env: OPENAI_API_KEY,
         base_url: "{base_url}", input_per_1m: {price_in}, output_per_1m: {price_out}}}
"""


def ask(text: str, **fields: Any) -> SlmComplete:
    return SlmComplete(
        model="gpt-4o-mini", messages=[ChatMessage(role="user", content=text)], **fields
    )


@pytest.fixture
def openai(openai_server: FakeServer):
    routed, _ = router(openai_models(openai_server.base_url), {"OPENAI_API_KEY": "sk-test"})
    return routed


async def test_a_plain_completion_returns_the_text_and_usage(openai, openai_server):
    openai_server.script.then(Reply("Hello there.", prompt_tokens=12, completion_tokens=3))

    done = await openai.complete(ask("Hi"))

    assert done.message.content == "Hello there."
    assert done.provider == "openai"
    assert done.model == "gpt-4o-mini"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (12, 3)
    assert done.finish_reason == "stop"


async def test_the_request_carries_the_deployment_model_key_and_parameters(openai, openai_server):
    openai_server.script.then(Reply("ok"))

    await openai.complete(ask("Hi", temperature=0.2, max_tokens=50, stop=["\n\n"], seed=7))

    sent = openai_server.script.requests[0]
    assert sent["model"] == "gpt-4o-mini-2024-07-18"
    assert sent["_authorization"] == "Bearer sk-test"
    assert sent["messages"] == [{"role": "user", "content": "Hi"}]
    assert (sent["temperature"], sent["stop"], sent["seed"]) == (0.2, ["\n\n"], 7)
    # A base URL means a compatible server, which reliably reads max_tokens.
    assert sent["max_tokens"] == 50


async def test_calls_to_one_deployment_share_one_kept_alive_connection(openai, openai_server):
    openai_server.script.then(Reply("one"), Reply("two"), Reply("three"))

    async def ignore(delta: SlmDelta) -> None:
        pass

    await openai.complete(ask("Hi"))
    await openai.complete(ask("Hi"), ignore)
    await openai.complete(ask("Hi"))

    # One client per deployment, made once and kept: a client per call would dial each time.
    ports = {sent["_client_port"] for sent in openai_server.script.requests}
    assert len(ports) == 1


async def test_cost_is_computed_from_the_model_list_prices(openai_server):
    routed, _ = router(
        openai_models(openai_server.base_url, price_in=2.5, price_out=10.0),
        {"OPENAI_API_KEY": "sk-test"},
    )
    openai_server.script.then(Reply("ok", prompt_tokens=1000, completion_tokens=500))

    done = await routed.complete(ask("Hi"))

    assert done.cost_usd == pytest.approx((1000 * 2.5 + 500 * 10.0) / 1_000_000)
    assert done.latency_ms > 0


async def test_a_non_streamed_tool_call_comes_back_as_a_tool_call(openai, openai_server):
    openai_server.script.then(Reply(tool_calls=[("call_1", "get_weather", {"city": "Oslo"})]))

    done = await openai.complete(ask("Weather in Oslo?", tools=[WEATHER], tool_choice="auto"))

    assert done.finish_reason == "tool_calls"
    assert done.message.tool_calls == [
        ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')
    ]
    sent = openai_server.script.requests[0]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    assert sent["tool_choice"] == "auto"


async def test_tool_results_are_sent_back_in_openai_form(openai, openai_server):
    openai_server.script.then(Reply("It is 3 degrees in Oslo."))
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')
    messages = [
        ChatMessage(role="user", content="Weather in Oslo?"),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="call_1", content='{"celsius": 3}'),
    ]

    await openai.complete(SlmComplete(model="gpt-4o-mini", messages=messages, tools=[WEATHER]))

    sent = openai_server.script.requests[0]["messages"]
    assert sent[1]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 3}'}


async def test_a_streamed_completion_sends_each_piece_as_a_delta(openai, openai_server):
    openai_server.script.then(Reply("One two three four.", prompt_tokens=9, completion_tokens=4))
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    done = await openai.complete(ask("Count"), collect)

    assert [d.content for d in deltas if d.content] == ["One ", "two ", "three ", "four."]
    assert [d.index for d in deltas] == list(range(len(deltas)))
    assert deltas[-1].done and deltas[-1].finish_reason == "stop"
    assert done.message.content == "One two three four."
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (9, 4)
    assert openai_server.script.requests[0]["stream_options"] == {"include_usage": True}


async def test_streamed_tool_call_fragments_are_assembled_into_whole_calls(openai, openai_server):
    calls = [
        ("call_a", "get_weather", {"city": "Oslo", "note": "a longer argument string"}),
        ("call_b", "get_weather", {"city": "Lima"}),
    ]
    openai_server.script.then(Reply(tool_calls=calls))
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    done = await openai.complete(ask("Oslo and Lima?", tools=[WEATHER]), collect)

    streamed = [d.tool_call for d in deltas if d.tool_call is not None]
    expected = [ToolCall(id=i, name=n, arguments=json.dumps(a)) for i, n, a in calls]
    assert streamed == expected
    assert done.message.tool_calls == expected
    assert done.finish_reason == "tool_calls"
    assert deltas[-1].done and deltas[-1].finish_reason == "tool_calls"


async def test_a_compatible_server_without_a_key_is_reached_by_base_url(openai_server):
    models = """
models:
  - name: llama3.2
    deployments:
      - {provider: openai, model: "llama3.2", base_url_env: OLLAMA_BASE_URL}
"""
    routed, _ = router(models, {"OLLAMA_BASE_URL": openai_server.base_url})
    openai_server.script.then(Reply("from the local server"))

    done = await routed.complete(
        SlmComplete(model="llama3.2", messages=[ChatMessage(role="user", content="hi")])
    )

    assert done.message.content == "from the local server"
    assert openai_server.script.requests[0]["model"] == "llama3.2"


async def test_a_streamed_answer_cut_off_midway_is_a_retryable_provider_error(
    openai, openai_server
):
    # Two pieces of text arrive, then the server drops the connection in the middle of the body.
    openai_server.script.then(Reply("One two three four.", cut_after=2))
    deployment = openai.models.deployments_for("gpt-4o-mini")[0]
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    with pytest.raises(ProviderError) as cut:
        await call_provider(openai, deployment, ask("Count"), collect)

    assert [d.content for d in deltas] == ["One ", "two "]
    assert cut.value.retryable
    assert deployment.label in str(cut.value)
    assert "payload is not completed" in str(cut.value)  # what the transport said


async def test_a_whole_answer_cut_off_midway_is_a_retryable_provider_error(openai, openai_server):
    # The headers promise the whole body; 40 bytes of it arrive before the connection drops.
    openai_server.script.then(Reply("Hello there.", cut_after=40))
    deployment = openai.models.deployments_for("gpt-4o-mini")[0]

    with pytest.raises(ProviderError) as cut:
        await call_provider(openai, deployment, ask("Hi"))

    assert cut.value.retryable
    assert deployment.label in str(cut.value)
    assert "payload is not completed" in str(cut.value)


async def test_a_stream_that_ends_cleanly_before_its_finish_reason_is_a_retryable_provider_error(
    openai, openai_server
):
    # The role chunk and two pieces of text, then the body ends as a whole one does: no chunk
    # with a finish_reason, no [DONE].
    openai_server.script.then(Reply("One two three four.", end_after=3))
    deployment = openai.models.deployments_for("gpt-4o-mini")[0]
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    with pytest.raises(ProviderError) as ended:
        await call_provider(openai, deployment, ask("Count"), collect)

    assert [d.content for d in deltas] == ["One ", "two "]
    assert ended.value.retryable
    assert deployment.label in str(ended.value)
    assert "the stream ended before the answer did" in str(ended.value)


async def test_a_tool_call_whose_stream_ends_early_is_not_sent(openai, openai_server):
    # The role chunk, the call's opening and the first fragment of its arguments, then a clean end.
    call = ("call_1", "get_weather", {"city": "Oslo"})
    openai_server.script.then(Reply(tool_calls=[call], end_after=3))
    deployment = openai.models.deployments_for("gpt-4o-mini")[0]
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    with pytest.raises(ProviderError, match="the stream ended before the answer did"):
        await call_provider(openai, deployment, ask("Oslo?", tools=[WEATHER]), collect)

    assert deltas == []


@pytest.mark.parametrize(
    ("end_after", "usage"),
    [
        (-1, (12, 3)),  # no [DONE]: the usage chunk after the finishing one arrived
        (-2, None),  # no usage chunk either: the usage is estimated
    ],
    ids=["without-done", "without-usage-or-done"],
)
async def test_a_stream_that_ends_after_its_finish_reason_is_whole(
    openai, openai_server, end_after, usage
):
    openai_server.script.then(
        Reply("One two three.", prompt_tokens=12, completion_tokens=3, end_after=end_after)
    )
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    done = await openai.complete(ask("Count"), collect)

    assert done.message.content == "One two three."
    assert done.finish_reason == "stop"
    if usage is not None:
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == usage
    assert done.usage.completion_tokens > 0
    assert deltas[-1].done and deltas[-1].error is None
