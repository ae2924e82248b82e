"""The consumer runtime: one function decides the fate of every delivered message.

    decode envelope + payload ──bad──▶ dead letter (reason) + term, and `<service>.failed`
    handler ok                  ─────▶ publish reply event (id derived from the command) + ack
    handler raises Rejected     ─────▶ publish `<service>.failed` + ack
    handler raises anything else ───▶ nak with backoff; past MaxDeliver ▶ dead letter + term
    an event of a type not known here ▶ ack: a follower of every event never asked for it

The reply's message id is derived from the command's id, so a redelivered command that is
handled again publishes a reply the server drops as a duplicate: the effect is not doubled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg

from bus import deadletter
from bus.errors import Rejected
from bus.metrics import count, observe
from bus.publish import publish
from bus.service import BatchHandler, Connected, Delivery, Handler
from bus.tracing import bind, consuming, current_traceparent
from schemas.catalogue import MessageType, UnknownMessage, by_subject, failed_event, of_type
from schemas.common import CommandFailed, FailureCode
from schemas.envelope import Envelope, EnvelopeError

log = logging.getLogger("soma.consume")


@dataclass(frozen=True)
class RetryPolicy:
    """Redelivery delays ``initial * coefficient**(n-1)``, capped; then a dead letter."""

    max_deliver: int = 5
    initial: float = 1.0
    coefficient: float = 2.0
    maximum: float = 60.0
    heartbeat: float = 10.0  # seconds between "still working" signals to the server

    def delay(self, delivered: int) -> float:
        return min(self.initial * self.coefficient ** max(delivered - 1, 0), self.maximum)


Route = tuple[MessageType, Handler]


class _Heartbeat:
    """Tells the server a long handler is still working, so ack-wait does not redeliver it.

    A timer, not a task: most handlers finish long before the first beat, and a timer that
    never fires costs almost nothing. One timer beats for every message of a batch.
    """

    def __init__(self, msgs: list[Msg], every: float) -> None:
        self.msgs = msgs
        self.every = every
        self.loop = asyncio.get_running_loop()
        self.handle = self.loop.call_later(every, self._beat)

    def _beat(self) -> None:
        self.loop.create_task(self._send())
        self.handle = self.loop.call_later(self.every, self._beat)

    async def _send(self) -> None:
        for msg in self.msgs:
            try:
                await msg.in_progress()
            except Exception as exc:
                log.debug("heartbeat failed: %s", exc)

    def cancel(self) -> None:
        self.handle.cancel()


def reply_id(command_id: str, suffix: str = "reply") -> str:
    return f"{command_id}.{suffix}"


def _deliveries(msg: Msg) -> int:
    try:
        return msg.metadata.num_delivered or 1
    except Exception:
        return 1


async def _fail_event(
    bus: Connected,
    service: str,
    env: Envelope,
    error: str,
    retryable: bool,
    code: FailureCode = FailureCode.FAILED,
) -> None:
    entry = failed_event(service)
    event = CommandFailed(command=env.schema, error=error, retryable=retryable, code=code)
    reply = env.reply(entry.name, reply_id(env.message_id, "failed"))
    await publish(bus, event, reply, entry=entry)


async def _not_followed(msg: Msg, service: str, env: Envelope) -> None:
    """An event of a type this process does not know, reaching a follower of every event.

    It is not a dead letter: the follower never asked for it by name. A service author's
    handler that started after this process publishes such events; they stay in the events
    stream for whoever does follow them (``soma tail`` shows them), and this process acks them.
    """
    log.info("%s: %s is not a type this process knows; not followed", service, msg.subject)
    count(service, "unknown", "not_followed")  # not the header: a publisher chooses it
    await msg.ack()


def make_processor(
    bus: Connected,
    service: str,
    routes: dict[str, Handler],
    policy: RetryPolicy,
    *,
    emit_replies: bool = True,
) -> Callable[[Msg], Awaitable[None]]:
    """Build the per-message function for one service; ``routes`` maps schema name → handler."""

    async def to_dead_letters(
        msg: Msg, reason: str, env: Envelope | None, deliveries: int, retryable: bool = False
    ) -> None:
        log.error("%s: dead-lettering %s: %s", service, msg.subject, reason)
        await deadletter.dead_letter(
            bus.js, msg, reason=reason, service=service, deliveries=deliveries
        )
        if env is not None and emit_replies:
            # Retries spent: it was tried. Otherwise the message itself was unusable.
            code = FailureCode.FAILED if retryable else FailureCode.INVALID
            await _fail_event(bus, service, env, reason, retryable=retryable, code=code)
        count(service, env.schema if env else "?", "dead_lettered")
        await msg.term()

    async def process(msg: Msg) -> None:
        deliveries = _deliveries(msg)
        try:
            env = Envelope.from_headers(msg.headers)
        except EnvelopeError as exc:
            await to_dead_letters(msg, f"undecodable envelope: {exc}", None, deliveries)
            return
        bind(env.correlation_id, env.tenant)
        if deliveries > policy.max_deliver:
            # Delivered again and again without an outcome: it kills or hangs its handler.
            reason = f"delivered {deliveries} times without an outcome (handler crashed or hung)"
            await to_dead_letters(msg, reason, env, deliveries, True)
            return
        try:
            entry = by_subject(msg.subject)
        except UnknownMessage as exc:
            if not emit_replies:
                await _not_followed(msg, service, env)
                return
            await to_dead_letters(msg, str(exc), env, deliveries)
            return
        handler = routes.get(entry.name) or routes.get("*")
        if handler is None and not emit_replies:
            await msg.ack()  # an event this consumer does not follow
            return
        if handler is None:
            await to_dead_letters(
                msg, f"{service} has no handler for {entry.name}", env, deliveries
            )
            return
        try:
            payload = entry.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await to_dead_letters(msg, f"schema-invalid {entry.name}: {exc}", env, deliveries)
            return

        started = time.perf_counter()
        beat = _Heartbeat([msg], policy.heartbeat)
        with consuming(env, f"{service} {entry.name}", msg.subject):
            try:
                result = await handler(payload, env)
                if result is not None and emit_replies:
                    await _reply(bus, env, result)
            except Rejected as exc:
                log.info("%s: rejected %s %s: %s", service, entry.name, env.message_id, exc)
                if emit_replies:
                    await _fail_event(bus, service, env, str(exc), retryable=False, code=exc.code)
                count(service, entry.name, "rejected")
                await msg.ack()
                return
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if deliveries >= policy.max_deliver:
                    await to_dead_letters(
                        msg, f"failed {deliveries} times, last: {reason}", env, deliveries, True
                    )
                    return
                delay = policy.delay(deliveries)
                log.warning(
                    "%s: %s %s failed (delivery %d/%d), retry in %.1fs: %s",
                    service,
                    entry.name,
                    env.message_id,
                    deliveries,
                    policy.max_deliver,
                    delay,
                    reason,
                )
                count(service, entry.name, "retried")
                await msg.nak(delay=delay)
                return
            finally:
                beat.cancel()
                observe(service, entry.name, time.perf_counter() - started)
        count(service, entry.name, "ok")
        await msg.ack()

    return process


async def _reply(bus: Connected, env: Envelope, result: msgspec.Struct) -> None:
    entry = of_type(type(result))
    reply = env.reply(entry.name, reply_id(env.message_id), entry.version)
    tp = current_traceparent()
    if tp:
        reply = msgspec.structs.replace(reply, traceparent=tp)
    await publish(bus, result, reply, entry=entry)


def make_batch_processor(
    bus: Connected,
    service: str,
    names: Collection[str],
    handler: BatchHandler,
    policy: RetryPolicy,
) -> Callable[[list[Msg]], Awaitable[None]]:
    """Build the per-batch function for events followed a batch at a time (no replies).

    Each message is first checked alone, as ``make_processor`` does (undecodable or unknown:
    dead letter; not followed: ack). The rest go to ``handler`` together and are acked only
    after it returns, so what it committed for them is never lost to an early ack. When it
    raises, each of them is handled again alone, with the usual retry and dead-letter rules:
    the one that keeps failing ends as a dead letter, the others are counted.
    """
    every = "*" in names

    async def to_dead_letters(msg: Msg, reason: str, env: Envelope | None, deliveries: int) -> None:
        log.error("%s: dead-lettering %s: %s", service, msg.subject, reason)
        await deadletter.dead_letter(
            bus.js, msg, reason=reason, service=service, deliveries=deliveries
        )
        count(service, env.schema if env else "?", "dead_lettered")
        await msg.term()

    async def admit(msg: Msg) -> tuple[Delivery, int] | None:
        """The decoded message and its delivery count, or None once it has been settled."""
        deliveries = _deliveries(msg)
        try:
            env = Envelope.from_headers(msg.headers)
        except EnvelopeError as exc:
            await to_dead_letters(msg, f"undecodable envelope: {exc}", None, deliveries)
            return None
        bind(env.correlation_id, env.tenant)
        if deliveries > policy.max_deliver:
            reason = f"delivered {deliveries} times without an outcome (handler crashed or hung)"
            await to_dead_letters(msg, reason, env, deliveries)
            return None
        try:
            entry = by_subject(msg.subject)
        except UnknownMessage:
            await _not_followed(msg, service, env)
            return None
        if not every and entry.name not in names:
            await msg.ack()  # an event this consumer does not follow
            return None
        try:
            payload = entry.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await to_dead_letters(msg, f"schema-invalid {entry.name}: {exc}", env, deliveries)
            return None
        return Delivery(entry.name, payload, env), deliveries

    async def settle_alone(msg: Msg, delivery: Delivery, deliveries: int) -> None:
        name, env = delivery.name, delivery.env
        started = time.perf_counter()
        beat = _Heartbeat([msg], policy.heartbeat)
        with consuming(env, f"{service} {name}", msg.subject):
            try:
                await handler([delivery])
            except Rejected as exc:
                log.info("%s: rejected %s %s: %s", service, name, env.message_id, exc)
                count(service, name, "rejected")
                await msg.ack()
                return
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if deliveries >= policy.max_deliver:
                    await to_dead_letters(
                        msg, f"failed {deliveries} times, last: {reason}", env, deliveries
                    )
                    return
                delay = policy.delay(deliveries)
                log.warning(
                    "%s: %s %s failed (delivery %d/%d), retry in %.1fs: %s",
                    service,
                    name,
                    env.message_id,
                    deliveries,
                    policy.max_deliver,
                    delay,
                    reason,
                )
                count(service, name, "retried")
                await msg.nak(delay=delay)
                return
            finally:
                beat.cancel()
                observe(service, name, time.perf_counter() - started)
        count(service, name, "ok")
        await msg.ack()

    async def process(msgs: list[Msg]) -> None:
        admitted: list[tuple[Msg, Delivery, int]] = []
        for msg in msgs:
            found = await admit(msg)
            if found is not None:
                admitted.append((msg, *found))
        if not admitted:
            return
        if len(admitted) == 1:
            await settle_alone(*admitted[0])
            return
        started = time.perf_counter()
        beat = _Heartbeat([msg for msg, _, _ in admitted], policy.heartbeat)
        try:
            await handler([delivery for _, delivery, _ in admitted])
        except Exception as exc:
            log.warning(
                "%s: a batch of %d failed (%s: %s); handling each alone",
                service,
                len(admitted),
                type(exc).__name__,
                exc,
            )
            for one in admitted:
                await settle_alone(*one)
            return
        finally:
            beat.cancel()
        each = (time.perf_counter() - started) / len(admitted)
        for msg, delivery, _ in admitted:
            observe(service, delivery.name, each)
            count(service, delivery.name, "ok")
            await msg.ack()

    return process
