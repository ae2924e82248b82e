"""Tools of an MCP server started over stdio appear in the registry as ``<server>.<tool>``."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from handlers.tools.config import ToolsConfig
from handlers.tools.invocation import invoke
from handlers.tools.mcp_servers import connect_all
from handlers.tools.registry import Registry, descriptors

SERVER = Path(__file__).with_name("notes_mcp_server.py")


@pytest.fixture(scope="module")
async def registry() -> AsyncIterator[Registry]:
    """One server for the module: starting an MCP server takes about a second."""
    servers = {
        "notes": {"command": sys.executable, "args": [str(SERVER)]},
        "broken": {"command": "/nonexistent/mcp-server"},
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOMA_MCP_SERVERS", json.dumps(servers))
        config = ToolsConfig()
    registry = Registry()
    connections = await connect_all(registry, config.mcp_servers)
    yield registry
    for connection in connections:
        await connection.close()


async def test_server_tools_are_listed_under_the_server_name(registry: Registry) -> None:
    listed = {d["name"]: d for d in descriptors(registry)}
    assert set(listed) == {"notes.add_note", "notes.list_notes", "notes.delete_note"}
    add = listed["notes.add_note"]
    assert add["description"] == "Store a note; returns how many notes are stored."
    assert add["inputSchema"]["properties"]["text"]["type"] == "string"
    assert add["inputSchema"]["required"] == ["text"]
    assert add["outputSchema"]["properties"]["result"]["type"] == "integer"
    assert listed["notes.list_notes"]["annotations"]["readOnlyHint"] is True
    assert listed["notes.add_note"]["annotations"]["readOnlyHint"] is False


async def test_server_tools_are_called_through_the_registry(registry: Registry) -> None:
    first = await invoke(registry, "c1", "notes.add_note", {"text": "buy milk"})
    second = await invoke(registry, "c2", "notes.add_note", {"text": "call Ann"})
    listed = await invoke(registry, "c3", "notes.list_notes", {})
    assert first.ok and second.ok and listed.ok
    assert second.output == {"result": first.output["result"] + 1}
    assert listed.output["result"][-2:] == ["buy milk", "call Ann"]


async def test_an_error_from_the_server_tool_is_an_error_result(registry: Registry) -> None:
    result = await invoke(registry, "c1", "notes.delete_note", {"index": 99})
    assert not result.ok
    assert "no note at index 99" in (result.error or "")


async def test_arguments_are_checked_against_the_servers_schema_first(registry: Registry) -> None:
    result = await invoke(registry, "c1", "notes.add_note", {"text": 3})
    assert not result.ok
    assert "at arguments.text: 3 is not of type 'string'" in (result.error or "")


async def test_a_server_that_cannot_start_is_listed_unavailable(registry: Registry) -> None:
    reason = registry.unavailable["broken.*"]
    assert reason.startswith("MCP server 'broken' (/nonexistent/mcp-server) did not start:")
    assert "No such file or directory" in reason
