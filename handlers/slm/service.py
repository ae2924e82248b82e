"""The slm handler process: ``slm.complete`` in, ``slm.completed`` out, deltas on core NATS;
``slm.list_models`` answers with the model names the router accepts."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

from bus.publish import publish_ephemeral
from bus.service import Connected, Service, Startup
from handlers.slm.deltas import OnDelta
from handlers.slm.models import ModelList, environment, load_models, models_file
from handlers.slm.providers import Provider
from handlers.slm.providers.anthropic import AnthropicProvider
from handlers.slm.providers.local import LocalProvider
from handlers.slm.providers.openai import OpenAIProvider
from handlers.slm.routing import Router
from kernel.settings import Settings
from schemas.envelope import Envelope
from schemas.models import ModelInfo, SlmListModels, SlmModelsListed
from schemas.slm import SlmComplete, SlmCompleted, SlmDelta

PublishDelta = Callable[[str, SlmDelta], Awaitable[None]]

# Replies kept for commands delivered again after they were answered (a lost ack): answering
# from here costs nothing, where a second provider call would be paid for twice.
RECENT_REPLIES = 1024


def providers() -> dict[str, Provider]:
    return {"local": LocalProvider(), "openai": OpenAIProvider(), "anthropic": AnthropicProvider()}


def model_infos(models: ModelList, created: int) -> list[ModelInfo]:
    """The routable names, each with its providers in fallback order (as the router tries them)."""
    return [
        ModelInfo(
            id=name,
            created=created,
            providers=list(dict.fromkeys(d.provider for d in models.deployments[name])),
            images=name in models.with_images,
        )
        for name in models.available_models()
    ]


def build(
    settings: Settings,
    publish_delta: PublishDelta | None = None,
    models_path: Path | None = None,
) -> Service:
    # httpx logs every upstream request at INFO: a line per model call, formatted and written on
    # the hot path, that says less than the slm metrics and the slm.completed event do.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    variables = environment(settings)
    path = models_path or models_file(variables)
    models = load_models(path, variables)
    router = Router(models, providers())
    # The list is the one the router was built from, so a listed name is one it accepts; its
    # ``created`` is when the model file was last changed.
    listed = SlmModelsListed(models=model_infos(models, int(path.stat().st_mtime)))
    recent: OrderedDict[str, SlmCompleted] = OrderedDict()
    startup: list[Startup] = []
    if publish_delta is None:
        # Deltas are ephemeral: core NATS on the connection the runtime serves this process on.
        serving: list[Connected] = []

        async def keep_connection(connected: Connected) -> None:
            serving.append(connected)

        async def publish_on_core(subject: str, delta: SlmDelta) -> None:
            await publish_ephemeral(serving[0].nc, subject, delta)

        publish_delta = publish_on_core
        startup.append(keep_connection)

    async def complete(cmd: SlmComplete, env: Envelope) -> SlmCompleted:
        key = f"{env.tenant}/{env.message_id}"
        if key in recent:
            return recent[key]
        on_delta = None
        if publish_delta is not None and cmd.stream_subject:
            on_delta = _publishing(publish_delta, cmd.stream_subject)
        reply = await router.complete(cmd, on_delta)
        recent[key] = reply
        if len(recent) > RECENT_REPLIES:
            recent.popitem(last=False)
        return reply

    async def list_models(cmd: SlmListModels, env: Envelope) -> SlmModelsListed:
        return listed

    async def close_providers() -> None:
        for provider in router.providers.values():
            await provider.aclose()

    return Service(
        name="slm",
        routes={SlmComplete: complete, SlmListModels: list_models},
        startup=startup,
        shutdown=[close_providers],
    )


def _publishing(publish_delta: PublishDelta, subject: str) -> OnDelta:
    async def on_delta(delta: SlmDelta) -> None:
        await publish_delta(subject, delta)

    return on_delta
