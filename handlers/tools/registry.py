"""The tool registry: what each tool is (an MCP-style descriptor) and how to call it.

A descriptor carries the same fields an MCP server lists (``name``, ``description``,
``inputSchema``, ``outputSchema``, ``annotations``) so the gateway, the language model and outside
MCP clients read one shape. Tools that exist but cannot run here (a missing secret, a server that
did not start) are kept apart as *unavailable*, with the reason, instead of being offered to a
model that would only get errors back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

Run = Callable[[dict[str, Any]], Awaitable[Any]]


class ToolError(Exception):
    """A failure the caller (usually a model) should read and can act on; ``output`` is kept too."""

    def __init__(self, message: str, output: Any = None) -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class Annotations:
    """MCP tool hints. They describe behaviour for clients and policy; nothing enforces them."""

    read_only: bool = False
    destructive: bool = True
    idempotent: bool = False
    open_world: bool = True

    def to_mcp(self) -> dict[str, bool]:
        return {
            "readOnlyHint": self.read_only,
            "destructiveHint": self.destructive,
            "idempotentHint": self.idempotent,
            "openWorldHint": self.open_world,
        }


@dataclass
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    run: Run
    output_schema: dict[str, Any] | None = None
    annotations: Annotations = field(default_factory=Annotations)
    # Seconds a call may take; also how long a claimed call is protected from a second runner.
    timeout: float = 30.0
    validator: Validator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cls = validator_for(self.input_schema, default=Draft202012Validator)
        cls.check_schema(self.input_schema)  # a broken schema is refused at registration
        self.validator = cls(self.input_schema)

    def descriptor(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
            "annotations": self.annotations.to_mcp(),
        }
        if self.output_schema is not None:
            described["outputSchema"] = self.output_schema
        return described


@dataclass
class Registry:
    tools: dict[str, Tool] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def add(self, tool: Tool) -> None:
        if tool.name in self.tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self.unavailable.pop(tool.name, None)
        self.tools[tool.name] = tool

    def mark_unavailable(self, name: str, reason: str) -> None:
        self.tools.pop(name, None)
        self.unavailable[name] = reason


def descriptors(registry: Registry) -> list[dict[str, Any]]:
    """The callable tools, as an MCP ``tools/list`` result's ``tools``, sorted by name."""
    return [registry.tools[name].descriptor() for name in sorted(registry.tools)]


def unavailable(registry: Registry) -> list[dict[str, str]]:
    """Tools that exist but cannot run here, each with the reason an operator can fix."""
    return [{"name": n, "reason": registry.unavailable[n]} for n in sorted(registry.unavailable)]


def argument_errors(tool: Tool, arguments: dict[str, Any], limit: int = 5) -> list[str]:
    """Every schema violation as ``at <path>: <message>``, worded for a model to correct."""
    errors = sorted(tool.validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    found = []
    for error in errors[:limit]:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        found.append(f"at arguments{path}: {error.message}")
    if len(errors) > limit:
        found.append(f"and {len(errors) - limit} more")
    return found
