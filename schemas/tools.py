"""Tools: invoke a registered tool by name; idempotent by ``call_id``."""

from typing import Any

from schemas.base import Message


class ToolInvoke(Message):
    call_id: str
    name: str
    arguments: dict[str, Any] = {}
    role: str = "user"


class ToolResult(Message):
    call_id: str
    name: str
    ok: bool
    output: Any = None
    error: str | None = None
    duration_ms: float = 0.0
