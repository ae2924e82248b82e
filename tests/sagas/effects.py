"""A tools service for saga tests: applies each call's effect once per call id, records order."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from bus.errors import Rejected
from bus.service import Service
from schemas.envelope import Envelope
from schemas.tools import ToolInvoke, ToolResult


@dataclass
class Effects:
    applied: Counter[str] = field(default_factory=Counter)  # call id -> times the effect ran
    deliveries: Counter[str] = field(default_factory=Counter)
    order: list[str] = field(default_factory=list)
    delay: float = 0.0

    def service(self) -> Service:
        async def invoke(cmd: ToolInvoke, env: Envelope) -> ToolResult:
            self.deliveries[cmd.call_id] += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            if cmd.name == "refuse":
                raise Rejected("this tool refuses every call")
            if cmd.name == "flaky" and self.deliveries[cmd.call_id] <= cmd.arguments["fail_times"]:
                raise ConnectionError("flaky tool is down")
            if cmd.call_id not in self.applied:  # idempotent by call id, like the real tools
                self.order.append(f"{cmd.name}:{cmd.arguments.get('label', '')}")
            self.applied[cmd.call_id] = 1
            return ToolResult(call_id=cmd.call_id, name=cmd.name, ok=True, output=cmd.call_id)

        return Service("tools", {ToolInvoke: invoke})
