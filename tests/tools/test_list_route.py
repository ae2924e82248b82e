"""``tools.list`` on a real nats-server: the registry's descriptors, narrowed by the caller's
role through the tenant's tool allow-list."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bus import runtime
from bus.connection import connect
from bus.request import Requester
from handlers.tools.config import ToolsConfig
from handlers.tools.service import build
from kernel.settings import Settings
from schemas.tools import ToolsList, ToolsListed
from tests.servers import NatsServer, nats_server

ACME_POLICY = """
version: "acme-1"
tools:
  roles:
    reader: [calc*]
    "*": [current_time]
"""


@pytest.fixture(scope="module")
def bus_server() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module")
async def requester(
    bus_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Requester]:
    data = tmp_path_factory.mktemp("tools-list")
    (data / "policy").mkdir()
    (data / "policy" / "acme.yaml").write_text(ACME_POLICY)
    settings = Settings.model_validate(
        {"NATS_URL": bus_server.url, "SOMA_DATA_DIR": data, "DATABASE_URL": None}
    )
    with pytest.MonkeyPatch.context() as env:
        env.delenv("SOMA_POLICY_DIR", raising=False)
        service = build(settings, ToolsConfig())
    running = await runtime.start(service, settings)
    nc = await connect(bus_server.url, "tools-test")
    caller = Requester(nc, nc.jetstream())
    await caller.start()
    yield caller
    await caller.close()
    await nc.close()
    await running.stop()


async def listed(requester: Requester, role: str | None, tenant: str = "acme") -> ToolsListed:
    _, reply = await requester.request(
        ToolsList(role=role), tenant=tenant, expect={"tools.listed"}, timeout=30
    )
    assert isinstance(reply.payload, ToolsListed), reply.payload
    return reply.payload


async def test_without_a_role_every_callable_tool_is_listed_with_its_schema(requester):
    tools = {t.name: t for t in (await listed(requester, None)).tools}

    assert {"calculator", "current_time"} <= set(tools)
    assert "github.list_issues" not in tools  # unavailable here: no token is set
    assert tools["calculator"].input_schema["type"] == "object"
    assert "expression" in tools["calculator"].input_schema["properties"]
    assert tools["calculator"].description


async def test_a_role_sees_only_the_tools_its_allow_list_names(requester):
    reader = [t.name for t in (await listed(requester, "reader")).tools]
    anyone = [t.name for t in (await listed(requester, "member")).tools]

    assert reader == ["calculator"]
    assert anyone == ["current_time"]


async def test_a_tenant_without_a_policy_file_follows_the_default_policy(requester):
    admin = {t.name for t in (await listed(requester, "admin", tenant="globex")).tools}
    member = [t.name for t in (await listed(requester, "member", tenant="globex")).tools]

    assert {"calculator", "current_time"} <= admin
    assert member == []
