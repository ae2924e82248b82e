"""The tools service as the bus runtime drives it: startup, the ToolInvoke route, shutdown; every
call authorized for the role it carries by the tenant's tool allow-list."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.service import Connected, Service
from handlers.tools.config import McpServer, ToolsConfig
from handlers.tools.service import build
from kernel.settings import Settings
from schemas.envelope import Envelope, new_id
from schemas.tools import ToolInvoke, ToolResult

NOTES_SERVER = Path(__file__).with_name("notes_mcp_server.py")
STRICT_POLICY = """
version: "strict-1"
tools:
  roles:
    user: [current_time]
"""


@pytest.fixture(scope="module")
async def service(
    tmp_path_factory: pytest.TempPathFactory, connected: Connected
) -> AsyncIterator[Service]:
    """One started service for the module: startup migrates and launches an MCP server."""
    tmp_path = tmp_path_factory.mktemp("tools-service")
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "strict.yaml").write_text(STRICT_POLICY)
    (tmp_path / "policy" / "broken.yaml").write_text("version: 1\ntools: {roles: {user: 7}}\n")
    settings = Settings(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'kernel.db'}", SOMA_DATA_DIR=tmp_path
    )
    config = ToolsConfig(
        SOMA_MCP_SERVERS={"notes": McpServer(command=sys.executable, args=[str(NOTES_SERVER)])}
    )
    with pytest.MonkeyPatch.context() as env:
        env.delenv("SOMA_POLICY_DIR", raising=False)
        service = build(settings, config)
    for hook in service.startup:
        await hook(connected)
    yield service
    for hook in service.shutdown:
        await hook()


async def deliver(service: Service, cmd: ToolInvoke, tenant: str = "acme") -> ToolResult:
    envelope = Envelope(
        message_id=new_id(), correlation_id=new_id(), tenant=tenant, schema="tools.invoke"
    )
    result = await service.routes[ToolInvoke](cmd, envelope)
    assert isinstance(result, ToolResult)
    return result


async def test_the_service_routes_tool_invoke_to_the_tool(service: Service) -> None:
    assert service.name == "tools"
    cmd = ToolInvoke(
        call_id=new_id(), name="calculator", arguments={"expression": "6 * 7"}, role="admin"
    )
    result = await deliver(service, cmd)
    assert result.ok
    assert result.output == {"result": 42}
    assert result.call_id == cmd.call_id


async def test_a_redelivered_command_gets_the_first_answer(service: Service) -> None:
    cmd = ToolInvoke(call_id=new_id(), name="current_time", arguments={}, role="admin")
    first = await deliver(service, cmd)
    await asyncio.sleep(0.01)
    again = await deliver(service, cmd)
    assert first.ok
    assert again == first  # the clock moved on; the stored answer did not


async def test_mcp_server_tools_are_reachable_through_the_service(service: Service) -> None:
    cmd = ToolInvoke(
        call_id=new_id(), name="notes.add_note", arguments={"text": "hello"}, role="admin"
    )
    result = await deliver(service, cmd)
    assert result.ok, result.error
    assert isinstance(result.output["result"], int)


async def test_a_bad_call_is_an_error_result_not_a_failure(service: Service) -> None:
    cmd = ToolInvoke(
        call_id=new_id(), name="python", arguments={"source": "print(1)"}, role="admin"
    )
    result = await deliver(service, cmd)
    assert not result.ok
    assert "'code' is a required property" in (result.error or "")


async def test_a_call_without_a_role_is_refused_and_nothing_runs(service: Service) -> None:
    cmd = ToolInvoke(call_id=new_id(), name="python", arguments={"code": "print(1)"})
    result = await deliver(service, cmd)
    assert not result.ok
    assert result.refused_by == "tool.not_allowed"
    assert result.output is None
    assert "must carry the caller's role" in (result.error or "")


async def test_a_role_the_allow_list_does_not_name_is_refused_with_the_rule(
    service: Service,
) -> None:
    cmd = ToolInvoke(call_id=new_id(), name="python", arguments={"code": "print(1)"}, role="member")
    result = await deliver(service, cmd)
    assert (result.ok, result.refused_by) == (False, "tool.not_allowed")
    assert result.error == (
        "refused by policy (tool.not_allowed): role 'member' may not call tool 'python'"
    )


async def test_the_tenants_own_allow_list_decides(service: Service) -> None:
    clock = ToolInvoke(call_id=new_id(), name="current_time", arguments={}, role="user")
    calc = ToolInvoke(
        call_id=new_id(), name="calculator", arguments={"expression": "1"}, role="user"
    )
    assert (await deliver(service, clock, tenant="strict")).ok
    refused = await deliver(service, calc, tenant="strict")
    assert refused.refused_by == "tool.not_allowed"
    assert (await deliver(service, calc, tenant="acme")).ok  # the default lets users calculate


async def test_a_tenant_policy_that_does_not_load_refuses_every_call(service: Service) -> None:
    cmd = ToolInvoke(call_id=new_id(), name="current_time", arguments={}, role="admin")
    result = await deliver(service, cmd, tenant="broken")
    assert result.refused_by == "policy.error"
    assert "broken.yaml" in (result.error or "")


async def test_a_refused_call_id_stays_free_for_an_allowed_call(service: Service) -> None:
    call_id = new_id()
    refused = await deliver(service, ToolInvoke(call_id=call_id, name="current_time", role="x"))
    allowed = await deliver(service, ToolInvoke(call_id=call_id, name="current_time", role="user"))
    assert refused.refused_by == "tool.not_allowed"
    assert allowed.ok and allowed.refused_by is None
