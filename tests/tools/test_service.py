"""The tools service as the bus runtime drives it: startup, the ToolInvoke route, shutdown."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.service import Service
from handlers.tools.config import McpServer, ToolsConfig
from handlers.tools.service import build
from schemas.envelope import Envelope, new_id
from schemas.tools import ToolInvoke, ToolResult
from soma.settings import Settings

NOTES_SERVER = Path(__file__).with_name("notes_mcp_server.py")


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    """One started service for the module: startup migrates and launches an MCP server."""
    tmp_path = tmp_path_factory.mktemp("tools-service")
    settings = Settings(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'soma.db'}", SOMA_DATA_DIR=tmp_path
    )
    config = ToolsConfig(
        SOMA_MCP_SERVERS={"notes": McpServer(command=sys.executable, args=[str(NOTES_SERVER)])}
    )
    service = build(settings, config)
    for hook in service.startup:
        await hook()
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
    cmd = ToolInvoke(call_id=new_id(), name="calculator", arguments={"expression": "6 * 7"})
    result = await deliver(service, cmd)
    assert result.ok
    assert result.output == {"result": 42}
    assert result.call_id == cmd.call_id


async def test_a_redelivered_command_gets_the_first_answer(service: Service) -> None:
    cmd = ToolInvoke(call_id=new_id(), name="current_time", arguments={})
    first = await deliver(service, cmd)
    await asyncio.sleep(0.01)
    again = await deliver(service, cmd)
    assert first.ok
    assert again == first  # the clock moved on; the stored answer did not


async def test_mcp_server_tools_are_reachable_through_the_service(service: Service) -> None:
    cmd = ToolInvoke(call_id=new_id(), name="notes.add_note", arguments={"text": "hello"})
    result = await deliver(service, cmd)
    assert result.ok, result.error
    assert isinstance(result.output["result"], int)


async def test_a_bad_call_is_an_error_result_not_a_failure(service: Service) -> None:
    cmd = ToolInvoke(call_id=new_id(), name="python", arguments={"source": "print(1)"})
    result = await deliver(service, cmd)
    assert not result.ok
    assert "'code' is a required property" in (result.error or "")
