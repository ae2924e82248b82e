"""Calling one tool: look it up, check the arguments against its schema, run it within its time.

Every way a call can go wrong for the caller's reasons (unknown tool, bad arguments, the tool's
own failure, a timeout) comes back as ``ok=False`` with a sentence the model can act on. The
chat and agent sagas feed that result to the model, so an error is an answer, not a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from handlers.tools.registry import Registry, ToolError, argument_errors
from schemas.tools import ToolResult

log = logging.getLogger(__name__)


async def invoke(
    registry: Registry, call_id: str, name: str, arguments: dict[str, Any]
) -> ToolResult:
    started = time.perf_counter()

    def finished(
        ok: bool, output: Any = None, error: str | None = None, code: str | None = None
    ) -> ToolResult:
        elapsed = (time.perf_counter() - started) * 1000
        return ToolResult(
            call_id=call_id,
            name=name,
            ok=ok,
            output=output,
            error=error,
            duration_ms=elapsed,
            code=code,
        )

    tool = registry.tools.get(name)
    if tool is None:
        if name in registry.unavailable:
            reason = registry.unavailable[name]
            return finished(
                False, error=f"tool {name!r} is unavailable: {reason}", code="unavailable"
            )
        known = ", ".join(sorted(registry.tools)) or "none"
        return finished(
            False, error=f"no tool named {name!r}; available tools: {known}", code="unknown_tool"
        )
    problems = argument_errors(tool, arguments)
    if problems:
        detail = "; ".join(problems)
        return finished(
            False,
            error=f"arguments for {name!r} do not match its schema: {detail}",
            code="invalid_arguments",
        )
    try:
        output = await asyncio.wait_for(tool.run(arguments), tool.timeout)
        return finished(True, output=msgspec.to_builtins(output))
    except TimeoutError:
        return finished(
            False, error=f"{name!r} did not finish within {tool.timeout:g} s", code="timeout"
        )
    except ToolError as exc:
        return finished(
            False, output=msgspec.to_builtins(exc.output), error=str(exc), code="failed"
        )
    except Exception as exc:
        log.exception("tool %s failed", name)
        return finished(False, error=f"{name!r} failed: {type(exc).__name__}: {exc}", code="failed")
