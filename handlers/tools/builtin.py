"""Tools that need nothing outside this process: arithmetic, the time, sandboxed Python."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from handlers.tools.arithmetic import ExpressionError, evaluate
from handlers.tools.registry import Annotations, Tool, ToolError
from handlers.tools.sandbox import Isolation, Limits, run_python

PURE = Annotations(read_only=True, destructive=False, idempotent=True, open_world=False)
# Touches nothing outside, but two calls may answer differently (the clock, random numbers).
READ_ONLY_LOCAL = Annotations(read_only=True, destructive=False, idempotent=False, open_world=False)


def calculator() -> Tool:
    async def run(arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"result": evaluate(arguments["expression"])}
        except ExpressionError as exc:
            raise ToolError(f"cannot evaluate {arguments['expression']!r}: {exc}") from None

    return Tool(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression exactly as written: + - * / // % **, parentheses, "
            "the constants pi, e, tau and the functions abs, round, min, max, sqrt, exp, log, "
            "log10, log2, sin, cos, tan, asin, acos, atan, floor, ceil, factorial."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 1000,
                    "description": "For example: (2 + 3) * sqrt(16) / 7",
                }
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {"result": {"type": "number"}},
            "required": ["result"],
        },
        annotations=PURE,
        run=run,
        timeout=5.0,
    )


def current_time() -> Tool:
    async def run(arguments: dict[str, Any]) -> dict[str, Any]:
        name = arguments.get("timezone", "UTC")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(
                f"unknown timezone {name!r}; use an IANA name such as 'Europe/Paris' or 'UTC'"
            ) from None
        now = time.time()
        local = datetime.fromtimestamp(now, zone)
        return {
            "iso": local.isoformat(),
            "timezone": name,
            "utc_offset": local.strftime("%z"),
            "unix": now,
        }

    return Tool(
        name="current_time",
        description="The current date and time, in UTC or in the given IANA timezone.",
        input_schema={
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA timezone name, e.g. 'America/New_York'; default UTC",
                }
            },
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "iso": {"type": "string"},
                "timezone": {"type": "string"},
                "utc_offset": {"type": "string"},
                "unix": {"type": "number"},
            },
            "required": ["iso", "timezone", "utc_offset", "unix"],
        },
        annotations=READ_ONLY_LOCAL,
        run=run,
        timeout=5.0,
    )


def python(limits: Limits, isolation: Isolation) -> Tool:
    async def run(arguments: dict[str, Any]) -> dict[str, Any]:
        done = await run_python(arguments["code"], limits, isolation)
        output = {"stdout": done.stdout, "stderr": done.stderr, "exit_code": done.exit_code}
        if done.limit == "time":
            raise ToolError(f"stopped: the code ran longer than {limits.timeout:g} s", output)
        if done.limit == "memory":
            mb = limits.memory_bytes // 2**20
            raise ToolError(f"stopped: the code needed more than {mb} MB of memory", output)
        if done.limit == "output":
            raise ToolError(
                f"stopped: the code printed more than {limits.output_bytes} bytes", output
            )
        if done.exit_code != 0:
            raise ToolError(
                f"the code exited with status {done.exit_code}:\n{done.stderr[-2000:]}", output
            )
        return output

    return Tool(
        name="python",
        description=(
            "Run a Python 3 program (standard library only) and return what it prints. "
            f"Limits: {limits.timeout:g} s, {limits.memory_bytes // 2**20} MB of memory, "
            f"{limits.output_bytes} bytes of output, {limits.disk_bytes // 2**20} MB of files, "
            "no network, no subprocesses. It runs in a sandbox as an unprivileged user with an "
            "empty environment and sees none of the host's files; its working folder /tmp is "
            "private, the only writable place, and gone afterwards. Print the results."
        ),
        input_schema={
            "type": "object",
            "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 100_000}},
            "required": ["code"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "stdout": {"type": "string"},
                "stderr": {"type": "string"},
                "exit_code": {"type": ["integer", "null"]},
            },
            "required": ["stdout", "stderr", "exit_code"],
        },
        annotations=READ_ONLY_LOCAL,
        run=run,
        timeout=limits.timeout + 10,
    )
