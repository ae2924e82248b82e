from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from . import routers
from .fake_anthropic import anthropic_app
from .fake_openai import openai_app
from .scripted import Script, serving


@dataclass
class FakeServer:
    base_url: str
    script: Script


@pytest.fixture(scope="session")
async def openai_running() -> AsyncIterator[FakeServer]:
    script = Script()
    async with serving(openai_app(script)) as url:
        yield FakeServer(f"{url}/v1", script)


@pytest.fixture(scope="session")
async def anthropic_running() -> AsyncIterator[FakeServer]:
    script = Script()
    async with serving(anthropic_app(script)) as url:
        yield FakeServer(url, script)


@pytest.fixture
def openai_server(openai_running: FakeServer) -> FakeServer:
    openai_running.script.reset()
    return openai_running


@pytest.fixture
def anthropic_server(anthropic_running: FakeServer) -> FakeServer:
    anthropic_running.script.reset()
    return anthropic_running


@pytest.fixture(autouse=True)
async def close_routers() -> AsyncIterator[None]:
    """Close the HTTP clients of the routers a test made, as the slm process does on stopping."""
    yield
    while routers.MADE:
        for provider in routers.MADE.pop().providers.values():
            await provider.aclose()
