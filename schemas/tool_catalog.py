"""The tool catalogue as callers see it: names, descriptions and JSON Schema inputs."""

from typing import Any

from schemas.base import Message


class ToolDescriptor(Message):
    """MCP-style: ``input_schema`` is the JSON Schema of the arguments object."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = {}


class ToolsList(Message):
    """List the tools that ``role`` may see (all registered tools for a None role)."""

    role: str | None = None


class ToolsListed(Message):
    tools: list[ToolDescriptor] = []
