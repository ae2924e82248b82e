"""The streamed side of a completion: numbered deltas handed to the caller's callback.

Providers only say "text arrived" or "a tool call is complete"; numbering, the final ``done``
delta and the error delta are kept here so every provider streams the same way. ``started``
lets routing know when a retry would repeat output the caller has already seen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from schemas.slm import SlmDelta, ToolCall

OnDelta = Callable[[SlmDelta], Awaitable[None]]


class DeltaSink:
    def __init__(self, on_delta: OnDelta) -> None:
        self._on_delta = on_delta
        self._next = 0

    @property
    def started(self) -> bool:
        return self._next > 0

    async def content(self, text: str) -> None:
        if text:
            await self._send(SlmDelta(index=self._next, content=text))

    async def tool_call(self, call: ToolCall) -> None:
        await self._send(SlmDelta(index=self._next, tool_call=call))

    async def finish(self, finish_reason: str) -> None:
        await self._send(SlmDelta(index=self._next, done=True, finish_reason=finish_reason))

    async def fail(self, error: str) -> None:
        await self._send(SlmDelta(index=self._next, done=True, error=error))

    async def _send(self, delta: SlmDelta) -> None:
        self._next += 1
        await self._on_delta(delta)
