"""The Slack message tools against a local server speaking Slack's Web API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from handlers.tools import slack
from handlers.tools.config import ToolsConfig
from handlers.tools.invocation import invoke
from handlers.tools.registry import Registry, unavailable
from handlers.tools.service import local_registry
from schemas.tools import ToolResult
from tests.tools.local_http import serve
from tests.tools.slack_server import CHANNEL, TOKEN, SlackState, handler_for


@pytest.fixture
def state() -> SlackState:
    return SlackState()


@pytest.fixture
def base_url(state: SlackState) -> Iterator[str]:
    with serve(handler_for(state)) as url:
        yield url


@pytest.fixture
def registry(client: httpx.AsyncClient, base_url: str) -> Registry:
    return local_registry(ToolsConfig(SOMA_SLACK_TOKEN=TOKEN, SOMA_SLACK_BASE_URL=base_url), client)


async def call(registry: Registry, name: str, **arguments: Any) -> ToolResult:
    return await invoke(registry, "c1", name, arguments)


async def test_post_message_sends_json_with_the_bearer_token(
    registry: Registry, state: SlackState
) -> None:
    result = await call(registry, "slack.post_message", channel=CHANNEL, text="Deploy finished")
    assert result.ok, result.error
    assert result.output == {"channel": CHANNEL, "ts": state.messages[CHANNEL][0]["ts"]}
    [request] = state.requests
    assert request["method"] == "POST"
    assert request["path"] == "/chat.postMessage"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"].startswith("application/json")
    assert request["body"] == {"channel": CHANNEL, "text": "Deploy finished"}


async def test_a_reply_goes_into_the_thread(registry: Registry, state: SlackState) -> None:
    parent = await call(registry, "slack.post_message", channel=CHANNEL, text="Question?")
    thread = parent.output["ts"]
    await call(registry, "slack.post_message", channel=CHANNEL, text="Answer.", thread_ts=thread)
    assert state.messages[CHANNEL][1]["thread_ts"] == parent.output["ts"]


async def test_channel_history_returns_the_newest_messages_first(
    registry: Registry, state: SlackState
) -> None:
    for text in ("one", "two", "three"):
        await call(registry, "slack.post_message", channel=CHANNEL, text=text)
    result = await call(registry, "slack.channel_history", channel=CHANNEL, limit=2)
    assert result.ok, result.error
    assert [m["text"] for m in result.output["messages"]] == ["three", "two"]
    assert result.output["messages"][0]["user"] == "U0BOT"
    assert result.output["has_more"] is True
    assert state.requests[-1]["method"] == "GET"
    assert state.requests[-1]["query"] == {"channel": CHANNEL, "limit": "2"}


async def test_slacks_refusal_is_passed_on(registry: Registry) -> None:
    result = await call(registry, "slack.post_message", channel="C0NOPE", text="hello")
    assert not result.ok
    assert result.error == "Slack refused chat.postMessage: channel_not_found"


async def test_a_bad_token_is_refused_by_slack(client: httpx.AsyncClient, base_url: str) -> None:
    registry = Registry()
    for tool in slack.tools(client, base_url, "xoxb-wrong"):
        registry.add(tool)
    result = await call(registry, "slack.channel_history", channel=CHANNEL)
    assert not result.ok
    assert result.error == "Slack refused conversations.history: invalid_auth"


async def test_without_a_token_the_tools_are_unavailable_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    registry = local_registry(ToolsConfig(SOMA_SLACK_TOKEN=None), client)
    assert not any(name.startswith("slack.") for name in registry.tools)
    listed = [u for u in unavailable(registry) if u["name"].startswith("slack.")]
    assert listed == [
        {"name": name, "reason": "SOMA_SLACK_TOKEN is not set"} for name in sorted(slack.TOOL_NAMES)
    ]
