"""Routing: retries with backoff and Retry-After, fallback between deployments, timeouts."""

from __future__ import annotations

import pytest

from bus.errors import Rejected
from handlers.slm.routing import ProvidersUnavailable
from schemas.slm import ChatMessage, SlmComplete, SlmDelta

from .conftest import FakeServer
from .routers import router
from .scripted import Failure, Reply


def ask(model: str = "chat") -> SlmComplete:
    return SlmComplete(model=model, messages=[ChatMessage(role="user", content="hello")])


def openai_then_anthropic(openai: FakeServer, anthropic: FakeServer, timeout: float = 5) -> str:
    return f"""
models:
  - name: chat
    deployments:
      - {{provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY,
         base_url: "{openai.base_url}", timeout: {timeout}, input_per_1m: 0.15, output_per_1m: 0.6}}
      - {{provider: anthropic, model: claude-haiku-4-5, api_key_env: ANTHROPIC_API_KEY,
         base_url: "{anthropic.base_url}", input_per_1m: 1.0, output_per_1m: 5.0}}
"""


KEYS = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"}


async def test_a_429_is_retried_after_the_wait_the_provider_asked_for(
    openai_server, anthropic_server
):
    routed, sleeps = router(openai_then_anthropic(openai_server, anthropic_server), KEYS)
    openai_server.script.then(Failure(429, {"retry-after-ms": "30"}), Reply("second time lucky"))

    done = await routed.complete(ask())

    assert done.message.content == "second time lucky"
    assert done.provider == "openai"
    assert len(openai_server.script.requests) == 2
    assert sleeps == [pytest.approx(0.030)]
    assert anthropic_server.script.requests == []


async def test_a_long_retry_after_is_capped(openai_server, anthropic_server):
    routed, sleeps = router(openai_then_anthropic(openai_server, anthropic_server), KEYS)
    openai_server.script.then(Failure(429, {"retry-after": "3600"}), Reply("ok"))

    await routed.complete(ask())

    assert sleeps == [0.05]  # retry_after_max of the test policy


async def test_without_retry_after_the_backoff_doubles(openai_server, anthropic_server):
    routed, sleeps = router(openai_then_anthropic(openai_server, anthropic_server), KEYS)
    openai_server.script.then(Failure(503), Failure(503), Reply("ok"))

    await routed.complete(ask())

    assert sleeps == [0.001, 0.002]


async def test_repeated_5xx_falls_back_to_the_next_deployment(openai_server, anthropic_server):
    routed, _ = router(openai_then_anthropic(openai_server, anthropic_server), KEYS)
    openai_server.script.then(Failure(500), Failure(502), Failure(503))
    anthropic_server.script.then(
        Reply("from the fallback", prompt_tokens=100, completion_tokens=10)
    )

    done = await routed.complete(ask())

    assert len(openai_server.script.requests) == 3
    assert done.provider == "anthropic"
    assert done.message.content == "from the fallback"
    # Priced at the deployment that answered.
    assert done.cost_usd == pytest.approx((100 * 1.0 + 10 * 5.0) / 1_000_000)


async def test_a_request_error_is_not_retried_but_falls_back(openai_server, anthropic_server):
    routed, sleeps = router(openai_then_anthropic(openai_server, anthropic_server), KEYS)
    openai_server.script.then(Failure(401, message="bad key"))
    anthropic_server.script.then(Reply("ok"))

    done = await routed.complete(ask())

    assert len(openai_server.script.requests) == 1
    assert sleeps == []
    assert done.provider == "anthropic"


async def test_when_every_deployment_refuses_the_command_is_rejected(
    openai_server, anthropic_server
):
    routed, _ = router(openai_then_anthropic(openai_server, anthropic_server), KEYS)
    openai_server.script.then(Failure(400, message="context too long"))
    anthropic_server.script.then(Failure(400, message="prompt is too long"))

    with pytest.raises(Rejected, match="prompt is too long"):
        await routed.complete(ask())


async def test_when_every_deployment_stays_down_the_error_is_retryable(
    openai_server, anthropic_server
):
    routed, _ = router(openai_then_anthropic(openai_server, anthropic_server), KEYS)
    openai_server.script.then(*[Failure(500)] * 3)
    anthropic_server.script.then(*[Failure(529, message="Overloaded")] * 3)

    with pytest.raises(ProvidersUnavailable, match="Overloaded"):
        await routed.complete(ask())
    assert len(anthropic_server.script.requests) == 3


async def test_a_request_slower_than_its_timeout_is_retried(openai_server, anthropic_server):
    routed, _ = router(openai_then_anthropic(openai_server, anthropic_server, timeout=0.2), KEYS)
    openai_server.script.then(Reply("too late", delay=1.0), Reply("in time"))

    done = await routed.complete(ask())

    assert done.message.content == "in time"
    assert done.provider == "openai"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_stream_that_breaks_after_output_is_not_retried(
    provider, openai_server, anthropic_server
):
    models, server = only(provider, openai_server, anthropic_server)
    routed, _ = router(models, KEYS)
    server.script.then(Reply("one two three four", error_after=2), Reply("never sent"))
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    with pytest.raises(Rejected, match="stream interrupted"):
        await routed.complete(ask(), collect)

    assert [d.content for d in deltas if d.content] == ["one ", "two "]
    assert deltas[-1].done and deltas[-1].error
    assert len(server.script.requests) == 1


def only(provider: str, openai: FakeServer, anthropic: FakeServer) -> tuple[str, FakeServer]:
    """A model list of one deployment on ``provider``'s fake server, and that server."""
    server = openai if provider == "openai" else anthropic
    key_env = "OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY"
    models = f"""
models:
  - name: chat
    deployments:
      - {{provider: {provider}, model: m, api_key_env: {key_env}, base_url: "{server.base_url}"}}
"""
    return models, server


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_stream_cut_off_after_output_fails_the_stream_once_and_is_not_retried(
    provider, openai_server, anthropic_server
):
    models, server = only(provider, openai_server, anthropic_server)
    routed, _ = router(models, KEYS)
    # The connection drops after two pieces of text; a second call would stream them again.
    server.script.then(Reply("one two three four", cut_after=2), Reply("one two again"))
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    with pytest.raises(Rejected, match="stream interrupted"):
        await routed.complete(ask(), collect)

    assert [d.content for d in deltas if d.content] == ["one ", "two "]
    ends = [d for d in deltas if d.done]
    assert len(ends) == 1 and ends[0] is deltas[-1]
    assert ends[0].error and routed.models.deployments_for("chat")[0].label in ends[0].error
    assert len(server.script.requests) == 1


# How many SSE events carry each provider's stream up to two pieces of text: OpenAI's role
# chunk; Anthropic's message_start, ping and text block start.
TWO_PIECES = {"openai": 3, "anthropic": 5}
NO_TEXT = {"openai": 1, "anthropic": 3}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_stream_that_ends_cleanly_after_output_fails_the_stream_once_and_is_not_retried(
    provider, openai_server, anthropic_server
):
    models, server = only(provider, openai_server, anthropic_server)
    routed, _ = router(models, KEYS)
    # The body ends, cleanly, after two pieces of text, without the stream's end marker.
    ended = Reply("one two three four", end_after=TWO_PIECES[provider])
    server.script.then(ended, Reply("one two again"))
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    with pytest.raises(Rejected, match="stream interrupted"):
        await routed.complete(ask(), collect)

    assert [d.content for d in deltas if d.content] == ["one ", "two "]
    ends = [d for d in deltas if d.done]
    assert len(ends) == 1 and ends[0] is deltas[-1]
    assert ends[0].error and routed.models.deployments_for("chat")[0].label in ends[0].error
    assert "the stream ended before the answer did" in ends[0].error
    assert len(server.script.requests) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_stream_that_ends_cleanly_before_any_output_is_retried(
    provider, openai_server, anthropic_server
):
    models, server = only(provider, openai_server, anthropic_server)
    routed, sleeps = router(models, KEYS)
    server.script.then(Reply("lost", end_after=NO_TEXT[provider]), Reply("whole this time"))
    deltas: list[SlmDelta] = []

    async def collect(delta: SlmDelta) -> None:
        deltas.append(delta)

    done = await routed.complete(ask(), collect)

    assert done.message.content == "whole this time"
    assert "".join(d.content or "" for d in deltas) == "whole this time"
    assert [d.finish_reason for d in deltas if d.done] == ["stop"]
    assert len(server.script.requests) == 2
    assert sleeps == [0.001]  # the policy's first backoff


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_whole_answer_cut_off_midway_is_retried(provider, openai_server, anthropic_server):
    models, server = only(provider, openai_server, anthropic_server)
    routed, sleeps = router(models, KEYS)
    server.script.then(Reply("cut short", cut_after=40), Reply("whole this time"))

    done = await routed.complete(ask())

    assert done.message.content == "whole this time"
    assert len(server.script.requests) == 2
    assert sleeps == [0.001]  # the policy's first backoff


async def test_an_unknown_model_is_rejected():
    routed, _ = router("models: []")

    with pytest.raises(Rejected, match="unknown model 'gpt-17'"):
        await routed.complete(ask("gpt-17"))
