"""Tools of outside MCP servers, started over stdio, registered as ``<server>.<tool>``.

Each server's connection lives in a task of its own: the MCP client's transports are anyio
context managers that must be entered and left by the same task, while tool calls arrive from
whichever task handles the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import mcp.types as mcp_types
from jsonschema.exceptions import SchemaError
from mcp import ClientSession, StdioServerParameters, stdio_client

from handlers.tools.config import McpServer
from handlers.tools.registry import Annotations, Registry, Tool, ToolError

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0


@dataclass
class Connection:
    name: str
    session: ClientSession
    tools: list[mcp_types.Tool]
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def close(self) -> None:
        self.stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 10)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        except Exception:
            log.exception("MCP server %s did not shut down cleanly", self.name)


async def connect(name: str, server: McpServer, errlog: TextIO = sys.stderr) -> Connection:
    """Start the server, initialise the session and list its tools (following pagination)."""
    ready: asyncio.Future[tuple[ClientSession, list[mcp_types.Tool]]] = (
        asyncio.get_running_loop().create_future()
    )
    stop = asyncio.Event()
    params = StdioServerParameters(
        command=server.command, args=server.args, env=server.env, cwd=server.cwd
    )

    async def hold() -> None:
        try:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                ready.set_result((session, await _list_tools(session)))
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            elif not isinstance(exc, asyncio.CancelledError):
                log.exception("MCP server %s connection ended", name)
            if isinstance(exc, asyncio.CancelledError):
                raise

    task = asyncio.create_task(hold(), name=f"mcp:{name}")
    try:
        session, listed = await asyncio.wait_for(asyncio.shield(ready), START_TIMEOUT)
    except BaseException:
        stop.set()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    return Connection(name=name, session=session, tools=listed, task=task, stop=stop)


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    listed: list[mcp_types.Tool] = []
    cursor = None
    while True:
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        listed.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return listed


def register(registry: Registry, connection: Connection, timeout: float) -> None:
    for remote in connection.tools:
        full = f"{connection.name}.{remote.name}"
        hints = remote.annotations or mcp_types.ToolAnnotations()
        defaults = Annotations()
        try:
            registry.add(
                Tool(
                    name=full,
                    description=remote.description or remote.title or "",
                    input_schema=remote.input_schema,
                    output_schema=remote.output_schema,
                    annotations=Annotations(
                        read_only=_hint(hints.read_only_hint, defaults.read_only),
                        destructive=_hint(hints.destructive_hint, defaults.destructive),
                        idempotent=_hint(hints.idempotent_hint, defaults.idempotent),
                        open_world=_hint(hints.open_world_hint, defaults.open_world),
                    ),
                    run=_caller(connection.session, remote.name, timeout),
                    timeout=timeout,
                )
            )
        except SchemaError as exc:
            registry.mark_unavailable(full, f"its input schema is invalid: {exc.message}")


def _hint(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def _caller(session: ClientSession, tool: str, timeout: float) -> Any:
    async def run(arguments: dict[str, Any]) -> Any:
        result = await session.call_tool(tool, arguments, read_timeout_seconds=timeout)
        return result_output(result)

    return run


def result_output(result: mcp_types.CallToolResult) -> Any:
    """Structured content when the server gives it, else the text; an error becomes ToolError."""
    texts = [block.text for block in result.content if isinstance(block, mcp_types.TextContent)]
    if result.is_error:
        raise ToolError("\n".join(texts) or "the MCP tool reported an error")
    if result.structured_content is not None:
        return result.structured_content
    if len(texts) == len(result.content):
        return "\n".join(texts)
    return [
        block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content
    ]


async def connect_all(
    registry: Registry, servers: dict[str, McpServer], errlog: TextIO = sys.stderr
) -> list[Connection]:
    """Connect every configured server; one that fails is listed as unavailable, not fatal."""
    connections = []
    for name, server in servers.items():
        if not name or "." in name:
            registry.mark_unavailable(f"{name}.*", "an MCP server name must be non-empty, no dots")
            continue
        try:
            connection = await connect(name, server, errlog)
        except Exception as exc:
            log.exception("MCP server %s did not start", name)
            reason = f"MCP server {name!r} ({server.command}) did not start: {exc}"
            registry.mark_unavailable(f"{name}.*", reason)
            continue
        register(registry, connection, server.timeout)
        connections.append(connection)
    return connections
