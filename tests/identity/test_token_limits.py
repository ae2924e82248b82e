"""An access token is held to its API key's limits on every gateway from its first request.

The real identity process and real gateways on a nats-server of the module's own. A token is
made on one gateway; another gateway, started afterwards, has never seen the key and learns its
limits from identity — or refuses the token while identity cannot answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bus import runtime
from bus.connection import connect
from bus.request import Requester
from bus.runtime import Running
from handlers.identity.service import build
from kernel.settings import Settings
from tests.gateway.serving import auth, gateway_config, served
from tests.identity.test_bus_routes import CONFIG, Member, member_with_key, seed_operator
from tests.servers import NatsServer, nats_server


@pytest.fixture(scope="module")
def bus_server() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module")
def settings(bus_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data: Path = tmp_path_factory.mktemp("token-limits")
    return Settings.model_validate({"NATS_URL": bus_server.url, "SOMA_DATA_DIR": data})


@pytest.fixture
async def identity(settings: Settings) -> AsyncIterator[Running]:
    """The identity process, for one test (which may stop it early)."""
    running = await runtime.start(build(settings, CONFIG), settings)
    await seed_operator(settings)
    yield running
    await running.stop()


@pytest.fixture
async def requester(settings: Settings, identity: Running) -> AsyncIterator[Requester]:
    nc = await connect(settings.nats_url or "", "token-limits-test")
    caller = Requester(nc, nc.jetstream())
    await caller.start()
    yield caller
    await caller.close()
    await nc.close()


def api_key(member: Member) -> str:
    return f"sk-soma-{member.key.key_id}-{member.key.secret}"


async def token_from(settings: Settings, member: Member) -> str:
    """An access token made on a gateway of its own, which then goes away."""
    async with served(settings, gateway_config()) as url, httpx.AsyncClient(base_url=url) as http:
        made = await http.post("/v1/auth/token", headers=auth(api_key(member)))
    assert made.status_code == 200, made.text
    return str(made.json()["access_token"])


async def test_a_fresh_gateway_holds_a_token_to_its_keys_rpm_from_the_first_request(
    settings: Settings, requester: Requester
) -> None:
    member = await member_with_key(requester, rpm_limit=1)
    token = await token_from(settings, member)

    async with served(settings, gateway_config()) as url, httpx.AsyncClient(base_url=url) as http:
        first = await http.get("/v1/auth/whoami", headers=auth(token))
        second = await http.get("/v1/auth/whoami", headers=auth(token))

    assert first.status_code == 200, first.text
    assert second.status_code == 429, second.text
    assert second.json()["error"]["code"] == "rate_limit_exceeded"


async def test_a_fresh_gateway_refuses_a_token_with_503_while_identity_cannot_say_its_limits(
    settings: Settings, requester: Requester, identity: Running
) -> None:
    member = await member_with_key(requester)
    token = await token_from(settings, member)
    await identity.stop()

    config = gateway_config(SOMA_BUS_TIMEOUT=1)
    async with served(settings, config) as url, httpx.AsyncClient(base_url=url) as http:
        answer = await http.get("/v1/auth/whoami", headers=auth(token))

    assert answer.status_code == 503, answer.text
    assert "limits of the API key" in answer.json()["error"]["message"]
