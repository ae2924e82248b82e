"""Routers built from a model list written in the test, with backoff in milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from handlers.slm.deltas import DeltaSink, OnDelta
from handlers.slm.models import Deployment, parse_models
from handlers.slm.providers import Completion
from handlers.slm.routing import Router
from handlers.slm.service import providers
from schemas.slm import SlmComplete

FAST_ROUTING = """
routing:
  attempts: 3
  backoff_initial: 0.001
  backoff_max: 0.004
  retry_after_max: 0.05
  timeout: 5
"""


# Routers made for the running test; the conftest closes their providers' clients after it.
MADE: list[Router] = []


class RecordedSleeps(list[float]):
    """Sleeps for real (milliseconds here) and remembers each wait for the test to check."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(seconds)


def router(models_yaml: str, env: Mapping[str, str] | None = None) -> tuple[Router, RecordedSleeps]:
    sleeps = RecordedSleeps()
    models = parse_models(FAST_ROUTING + models_yaml, env or {})
    made = Router(models, providers(), sleep=sleeps, jitter=lambda: 1.0)
    MADE.append(made)
    return made, sleeps


async def call_provider(
    routed: Router, deployment: Deployment, request: SlmComplete, on_delta: OnDelta | None = None
) -> Completion:
    """The request straight to the deployment's provider, without routing: what the provider
    itself makes of the answer, errors included; streamed when ``on_delta`` is given."""
    sink = DeltaSink(on_delta) if on_delta is not None else None
    return await routed.providers[deployment.provider].complete(request, deployment, sink)
