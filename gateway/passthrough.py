"""Pass-through chat turns (``SOMA_CHAT_PIPELINE=passthrough``): one ``slm.complete`` command
straight to the slm process and its ``slm.completed`` reply — no saga, no policy, no memory.

A pass-through turn has one effect, the model call, and nothing to coordinate; its reply event is
already the durable record of that effect. ``slm.completed`` lands in SOMA_EVT under the turn's
correlation id with the usage and cost (analytics meters the turn from it, once: it counts by
event id, and the reply's id is derived from the command's). A saga would only add committed
transactions and two bus hops to every turn.

Idempotency. The command's message id is ``<turn id>.slm`` and, under an ``Idempotency-Key``,
the turn id is the request's stable id, so a retry re-publishes the same id and JetStream drops
it (its publish ack says ``duplicate``): the model is not called again. The earlier attempt's
answer is then either still to come — the reply watcher is in place before the publish — or
has gone by, and is read back from SOMA_EVT: the tenant's slm events since the commands
stream's duplicate window opened, matched by correlation id. A retry later than that window
(``SOMA_DEDUP_WINDOW``) is a new command; the idempotency lease makes a retry take over a dead
gateway's request within seconds, and a finished non-streamed answer is replayed from the
idempotency record itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus.publish import envelope_for, publish
from bus.request import Reply, decode_reply
from gateway import chat_turns
from gateway.auth import Principal
from gateway.dispatch import Dispatch
from gateway.errors import unavailable
from schemas.catalogue import STREAMS, of_type
from schemas.chat import ChatTurnInput, ChatTurnResult
from schemas.common import CommandFailed
from schemas.envelope import CORRELATION_ID, turn_step_id
from schemas.slm import SlmComplete, SlmCompleted

log = logging.getLogger("soma.gateway.passthrough")

COMPLETED = of_type(SlmCompleted).name
# What a gateway follows of a pass-through turn: the answer, or the command's refusal.
EVENTS = (COMPLETED, "slm.failed")
# How long reading the earlier answer back may take before the turn is left to the watcher.
LOOKUP_TIMEOUT = 10.0


def command_id(turn_id: str) -> str:
    return turn_step_id(turn_id, "slm")


def command(turn: ChatTurnInput, turn_id: str) -> SlmComplete:
    """What the ``chat_turn`` saga asks of the model in a turn without policy or memory."""
    return SlmComplete(
        model=turn.model,
        messages=turn.messages,
        tools=turn.tools,
        tool_choice=turn.tool_choice,
        parallel_tool_calls=turn.parallel_tool_calls,
        logprobs=turn.logprobs,
        top_logprobs=turn.top_logprobs,
        temperature=turn.temperature,
        max_tokens=turn.max_tokens,
        stop=turn.stop,
        seed=turn.seed,
        response_format=turn.response_format,
        user=turn.user,
        stream_subject=f"soma.stream.{turn_id}" if turn.stream else None,
        key_id=turn.key_id,
    )


def result_of(done: SlmCompleted) -> ChatTurnResult:
    """The model's answer as a turn's result; tool calls are the caller's, as in a full turn."""
    return ChatTurnResult(
        message=done.message,
        finish_reason="tool_calls" if done.message.tool_calls else done.finish_reason,
        model=done.model,
        usage=done.usage,
        cost_usd=done.cost_usd,
        stop_sequence=done.stop_sequence,
        logprobs=done.logprobs,
    )


@dataclass
class PassThroughTurn:
    """One pass-through turn, as ``gateway.streaming`` and ``run`` drive a turn."""

    dispatch: Dispatch
    principal: Principal
    turn: ChatTurnInput
    id: str
    events: tuple[str, ...] = EVENTS
    _command_id: str = field(init=False)

    def __post_init__(self) -> None:
        self._command_id = command_id(self.id)

    async def start(self, events: asyncio.Queue[Reply]) -> None:
        """Publish the command; the caller already watches ``id`` so no reply is missed."""
        message = command(self.turn, self.id)
        env = envelope_for(
            message,
            tenant=self.principal.tenant,
            actor=self.principal.user,
            correlation_id=self.id,
            message_id=self._command_id,
        )
        try:
            published = await publish(self.dispatch.bus, message, env)
        except Exception as exc:
            log.warning("publishing pass-through turn %s failed: %s", self.id, exc)
            raise unavailable("The message bus is not reachable.") from exc
        if published.duplicate:
            earlier = await self.earlier_reply()
            if earlier is not None:
                events.put_nowait(earlier)

    def is_end(self, reply: Reply) -> bool:
        if reply.schema == COMPLETED:
            return True
        return isinstance(reply.payload, CommandFailed) and (
            reply.envelope.causation_id == self._command_id
        )

    def outcome(self, reply: Reply) -> ChatTurnResult:
        payload = reply.payload
        if isinstance(payload, CommandFailed):
            log.warning("pass-through turn %s failed: %s", self.id, payload.error)
            raise chat_turns.failure_error(payload.code, payload.error, self.turn.model)
        assert isinstance(payload, SlmCompleted)
        return result_of(payload)

    async def cancel(self, reason: str) -> None:
        """A model call cannot be withdrawn; the caller just stops waiting for it."""
        log.info("pass-through turn %s abandoned: %s", self.id, reason)

    async def earlier_reply(self) -> Reply | None:
        """The reply to this command that an earlier attempt's publish already drew, if any."""
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                return await self._read_back()
        except Exception as exc:  # the watcher may still see it; the caller's timeout bounds it
            log.warning("reading back the answer of turn %s failed: %s", self.id, exc)
            return None

    async def _read_back(self) -> Reply | None:
        js, nc = self.dispatch.js, self.dispatch.nc
        window = (await js.stream_info(STREAMS["cmd"])).config.duplicate_window or 120.0
        since = datetime.now(UTC) - timedelta(seconds=window + 5)
        inbox = nc.new_inbox()
        found: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()

        async def on_event(msg: Msg) -> None:
            if found.done():
                return
            reply = None
            if (msg.headers or {}).get(CORRELATION_ID) == self.id:
                reply = decode_reply(msg)
            if reply is not None and self.is_end(reply):
                found.set_result(reply)
            elif msg.metadata.num_pending == 0:
                found.set_result(None)

        sub = await nc.subscribe(inbox, cb=on_event)
        try:
            info = await js.add_consumer(
                STREAMS["evt"],
                ConsumerConfig(
                    deliver_subject=inbox,
                    filter_subject=f"soma.evt.{self.principal.tenant}.slm.>",
                    deliver_policy=DeliverPolicy.BY_START_TIME,
                    opt_start_time=since,
                    ack_policy=AckPolicy.NONE,
                    inactive_threshold=LOOKUP_TIMEOUT,
                    mem_storage=True,
                ),
            )
            if not info.num_pending:
                return None
            return await found
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
