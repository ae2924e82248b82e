"""Tools: invoke a registered tool by name; idempotent by ``call_id``.

The tool catalogue as callers see it: names, descriptions and JSON Schema inputs.
"""

from typing import Any

from schemas.base import Message


class ToolInvoke(Message):
    """Run one tool for a caller. ``role`` and ``user`` are the caller's, as the gateway
    authenticated them; the tools process runs the call only if the tenant's tool allow-list
    grants ``role`` the tool, and refuses a call without a role."""

    call_id: str
    name: str
    arguments: dict[str, Any] = {}
    role: str | None = None
    user: str | None = None


class ToolResult(Message):
    """``refused_by`` names the policy rule that refused the call (then nothing ran). ``code``
    says what kind of failure an ``ok=False`` is, for callers that branch on it: ``unknown_tool``,
    ``unavailable``, ``invalid_arguments``, ``timeout`` (the tool's own limit) or ``failed``."""

    call_id: str
    name: str
    ok: bool
    output: Any = None
    error: str | None = None
    duration_ms: float = 0.0
    refused_by: str | None = None
    code: str | None = None


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
