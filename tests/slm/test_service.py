"""The slm service as the bus runtime sees it: a route for SlmComplete, deltas published."""

from __future__ import annotations

import pytest

from bus.errors import Rejected
from handlers.slm.service import build
from kernel.settings import Settings
from schemas.envelope import Envelope, new_id
from schemas.slm import ChatMessage, SlmComplete, SlmCompleted, SlmDelta

from .conftest import FakeServer
from .scripted import Reply


def envelope(message_id: str | None = None) -> Envelope:
    return Envelope(
        message_id=message_id or new_id(),
        correlation_id=new_id(),
        tenant="acme",
        schema="slm.complete",
    )


def ask(model: str, stream_subject: str | None = None) -> SlmComplete:
    return SlmComplete(
        model=model,
        messages=[ChatMessage(role="user", content="Hello there")],
        stream_subject=stream_subject,
    )


@pytest.fixture
def models_file(tmp_path, openai_server: FakeServer):
    path = tmp_path / "models.yaml"
    path.write_text(
        f"""
models:
  - name: soma-local-dev
    deployments: [{{provider: local, model: soma-local-dev}}]
  - name: gpt-4o-mini
    deployments:
      - {{provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY,
         base_url: "{openai_server.base_url}", input_per_1m: 0.15, output_per_1m: 0.6}}
"""
    )
    return path


async def test_the_service_answers_slm_complete_with_slm_completed(models_file):
    service = build(Settings(), models_path=models_file)

    reply = await service.routes[SlmComplete](ask("soma-local-dev"), envelope())

    assert service.name == "slm"
    assert isinstance(reply, SlmCompleted)
    assert reply.provider == "local"


async def test_deltas_are_published_to_the_requested_stream_subject(models_file):
    published: list[tuple[str, SlmDelta]] = []

    async def publish(subject: str, delta: SlmDelta) -> None:
        published.append((subject, delta))

    service = build(Settings(), publish_delta=publish, models_path=models_file)
    reply = await service.routes[SlmComplete](
        ask("soma-local-dev", stream_subject="soma.stream.c1"), envelope()
    )

    assert {subject for subject, _ in published} == {"soma.stream.c1"}
    deltas = [delta for _, delta in published]
    assert "".join(d.content for d in deltas) == reply.message.content
    assert deltas[-1].done


async def test_without_a_stream_subject_nothing_is_published(models_file):
    published: list[SlmDelta] = []

    async def publish(subject: str, delta: SlmDelta) -> None:
        published.append(delta)

    service = build(Settings(), publish_delta=publish, models_path=models_file)
    await service.routes[SlmComplete](ask("soma-local-dev"), envelope())

    assert published == []


async def test_a_redelivered_command_is_answered_without_calling_the_provider_again(
    models_file, openai_server, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    openai_server.script.then(Reply("paid once"), Reply("paid twice"))
    service = build(Settings(), models_path=models_file)
    handle = service.routes[SlmComplete]
    command_id = new_id()

    first = await handle(ask("gpt-4o-mini"), envelope(command_id))
    again = await handle(ask("gpt-4o-mini"), envelope(command_id))

    assert first == again
    assert again.message.content == "paid once"
    assert len(openai_server.script.requests) == 1
    for close in service.shutdown:
        await close()


async def test_an_unknown_model_is_rejected(models_file):
    service = build(Settings(), models_path=models_file)

    with pytest.raises(Rejected, match="unknown model"):
        await service.routes[SlmComplete](ask("no-such-model"), envelope())
