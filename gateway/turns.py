"""What a chat completion needs of a turn, whichever pipeline runs it: the ``chat_turn`` saga
(``gateway.chat_turns``), the same commands sent by the gateway itself (``gateway.direct``) or
one command to the slm process (``gateway.passthrough``).

Both answer with a ``ChatTurnResult``, so the response a caller gets — the completion body, the
SSE chunks, ``finish_reason``, tool calls and usage — is built by the same code for both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from bus.request import Reply
from gateway import chat_turns
from gateway.auth import Principal
from gateway.direct import DirectTurn
from gateway.dispatch import Dispatch
from gateway.errors import ApiError
from gateway.passthrough import PassThroughTurn
from schemas.chat import ChatTurnInput, ChatTurnResult


class Turn(Protocol):
    """A turn under way. ``id`` is its correlation id: its events and deltas are named by it."""

    @property
    def id(self) -> str: ...

    @property
    def events(self) -> tuple[str, ...]:
        """The event types the turn's caller follows (``Requester.watching``)."""
        ...

    async def start(self, events: asyncio.Queue[Reply]) -> None:
        """Send the turn on its way; ``events`` already receives its events."""
        ...

    def is_end(self, reply: Reply) -> bool: ...

    def outcome(self, reply: Reply) -> ChatTurnResult:
        """The result the end stands for, or the ``ApiError`` a failed end stands for."""
        ...

    async def cancel(self, reason: str) -> None: ...


@dataclass
class SagaTurn:
    """A full turn: the ``chat_turn`` saga, started and awaited as ``gateway.chat_turns`` says."""

    dispatch: Dispatch
    principal: Principal
    turn: ChatTurnInput
    id: str
    events: tuple[str, ...] = chat_turns.EVENTS

    async def start(self, events: asyncio.Queue[Reply]) -> None:
        await chat_turns.start(self.dispatch, self.principal, self.turn, self.id, events)

    def is_end(self, reply: Reply) -> bool:
        return chat_turns.is_end(reply, self.id)

    def outcome(self, reply: Reply) -> ChatTurnResult:
        return chat_turns.outcome(reply, self.turn.model)

    async def cancel(self, reason: str) -> None:
        await chat_turns.cancel(self.dispatch, self.principal, self.id, reason)


def turn_for(
    dispatch: Dispatch,
    principal: Principal,
    turn: ChatTurnInput,
    turn_id: str,
    pipeline: str,
    timeout: float,
) -> Turn:
    """The turn as the configured pipeline runs it (``SOMA_CHAT_PIPELINE``). A request with an
    ``Idempotency-Key`` asks for a turn a retry can find on any gateway: under ``direct`` it is
    the saga, which outlives the gateway that started it. So is a turn with platform tools,
    which only the saga runs."""
    if pipeline == "passthrough":
        return PassThroughTurn(dispatch, principal, turn, turn_id)
    if pipeline == "direct" and not chat_turns.resumable(turn_id) and not turn.platform_tools:
        return DirectTurn(dispatch, principal, turn, turn_id, timeout)
    return SagaTurn(dispatch, principal, turn, turn_id)


async def complete(
    dispatch: Dispatch,
    principal: Principal,
    turn: ChatTurnInput,
    turn_id: str,
    pipeline: str,
    timeout: float,
) -> ChatTurnResult:
    """Run the turn to its end and answer its result, or the ``ApiError`` its end stands for."""
    run = turn_for(dispatch, principal, turn, turn_id, pipeline, timeout)
    async with dispatch.requester.watching(run.id, run.events) as events:
        await run.start(events)
        try:
            async with asyncio.timeout(timeout):
                while not run.is_end(reply := await events.get()):
                    pass
        except TimeoutError:
            await run.cancel("the caller's request timed out")
            raise ApiError(
                504, "The chat turn did not finish in time.", type="server_error", code="timeout"
            ) from None
    return chat_turns.named(run.outcome(reply))
