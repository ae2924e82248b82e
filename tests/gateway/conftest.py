"""One nats-server of our own for the gateway tests, the stand-in handler services on it, and a
gateway served on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from openai import AsyncOpenAI

from kernel.settings import Settings
from tests.gateway.serving import gateway_config, served
from tests.gateway.standins import World, start_world
from tests.servers import NatsServer, nats_server, require_service

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="package")
def gw_nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="package")
def gw_settings(gw_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(NATS_URL=gw_nats.url, SOMA_DATA_DIR=tmp_path_factory.mktemp("gateway"))


@pytest.fixture(scope="package")
async def world(gw_settings: Settings) -> AsyncIterator[World]:
    started = await start_world(gw_settings)
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture(scope="package")
async def gateway_url(gw_settings: Settings, world: World) -> AsyncIterator[str]:
    async with served(gw_settings, gateway_config()) as url:
        yield url


@pytest.fixture
async def http(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=15) as client:
        yield client


@pytest.fixture
def member_key(world: World) -> str:
    key, _ = world.identity.api_key("acme", ["member"])
    return key


@pytest.fixture
def openai_client(gateway_url: str, member_key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=member_key, max_retries=0)


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL
