"""``slm.list_models`` on a real nats-server: the names the router accepts, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bus import runtime
from bus.connection import connect
from bus.request import Requester
from handlers.slm.service import build
from kernel.settings import Settings
from schemas.models import SlmListModels, SlmModelsListed
from tests.servers import NatsServer, nats_server

MODELS = """
models:
  - name: soma-local-dev
    deployments: [{provider: local, model: soma-local-dev}]
  - name: gpt-4o-mini
    deployments:
      - {provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY}
      - {provider: local, model: soma-local-dev}
  - name: claude-unconfigured
    deployments:
      - {provider: anthropic, model: claude-x, api_key_env: SOMA_TEST_KEY_NOBODY_SETS}
"""


@pytest.fixture(scope="module")
def bus_server() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module")
def models_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slm-models") / "models.yaml"
    path.write_text(MODELS)
    return path


@pytest.fixture(scope="module")
async def requester(
    bus_server: NatsServer, models_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Requester]:
    settings = Settings.model_validate(
        {
            "NATS_URL": bus_server.url,
            "SOMA_DATA_DIR": tmp_path_factory.mktemp("slm-bus"),
            "OPENAI_API_KEY": "sk-test-not-used",
        }
    )
    running = await runtime.start(build(settings, models_path=models_path), settings)
    nc = await connect(bus_server.url, "slm-test")
    caller = Requester(nc, nc.jetstream())
    await caller.start()
    yield caller
    await caller.close()
    await nc.close()
    await running.stop()


async def test_the_listed_models_are_the_configured_routable_ones(requester, models_path):
    _, reply = await requester.request(
        SlmListModels(), tenant="acme", expect={"slm.models_listed"}, timeout=20
    )

    assert isinstance(reply.payload, SlmModelsListed)
    listed = {m.id: m for m in reply.payload.models}
    assert sorted(listed) == ["gpt-4o-mini", "soma-local-dev"]
    assert listed["gpt-4o-mini"].providers == ["openai", "local"]
    assert listed["soma-local-dev"].providers == ["local"]
    assert listed["soma-local-dev"].created == int(models_path.stat().st_mtime)
