"""The official openai client against the real gateway, with every process of the system up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import ROOT, System
from tests.servers import create_key, free_port, stop_processes


@pytest.fixture(scope="module")
def gateway(system: System) -> Iterator[tuple[str, str]]:
    """The gateway and identity processes beside the others; yields (base URL, API key)."""
    port = free_port()
    env = {**system.env, "SOMA_HTTP_PORT": str(port), "SOMA_RATE_RPM": "0", "SOMA_RATE_TPM": "0"}
    key = create_key(env, "acme")
    procs = [
        subprocess.Popen([sys.executable, "-m", "soma.cli", "run", name], env=env, cwd=ROOT)
        for name in ("identity", "gateway")
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if (
                    httpx.get(
                        f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}
                    ).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("the gateway did not answer within 60 s")
        yield base, key
    finally:
        stop_processes(procs)


@pytest.fixture
def client(gateway: tuple[str, str]) -> openai.OpenAI:
    base, key = gateway
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}


def test_a_completion_runs_the_whole_chat_turn(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="soma-local-dev", messages=[{"role": "user", "content": "Hello from the SDK"}]
    )
    assert reply.object == "chat.completion"
    assert "soma local dev model" in (reply.choices[0].message.content or "")
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_a_streamed_completion_ends_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="soma-local-dev",
            messages=[{"role": "user", "content": "Stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "soma local dev model" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_a_tool_call_round_trip_continues_the_conversation(client: openai.OpenAI) -> None:
    messages: list = [{"role": "user", "content": "Compute 6*7 with the calculator"}]
    first = client.chat.completions.create(
        model="soma-local-dev", messages=messages, tools=[CALCULATOR], tool_choice="required"
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "calculator"
    json.loads(call.function.arguments)
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "42"},
    ]
    second = client.chat.completions.create(
        model="soma-local-dev", messages=messages, tools=[CALCULATOR]
    )
    assert second.choices[0].finish_reason == "stop"
    assert "42" in (second.choices[0].message.content or "")


def test_models_and_embeddings(client: openai.OpenAI) -> None:
    assert "soma-local-dev" in {m.id for m in client.models.list()}
    vectors = client.embeddings.create(model="hashed-ngrams-384", input=["one text", "another"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0


def test_an_unknown_model_and_a_bad_key_raise_the_sdks_exceptions(
    client: openai.OpenAI, gateway: tuple[str, str]
) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    stranger = openai.OpenAI(
        base_url=f"{gateway[0]}/v1", api_key="sk-soma-0000000000000000-nope", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
