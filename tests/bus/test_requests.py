"""Request/await on a real nats-server: waiters are found by correlation id."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.connection import connect
from bus.publish import envelope_for, publish
from bus.request import Requester
from bus.service import Connected
from kernel.settings import Settings
from schemas.catalogue import failed_event, of_type
from schemas.common import CommandFailed
from schemas.envelope import Envelope
from schemas.sagas import SagaFinished, SagaStart, SagaStarted, SagaState


async def test_two_waiters_on_one_correlation_id_each_get_its_events(
    js,  # type: ignore[no-untyped-def]
    settings: Settings,
) -> None:
    nc = await connect(settings.nats_url or "", "requests-test")
    requester = Requester(nc, nc.jetstream())
    await requester.start()
    await nc.flush()  # the subscription is in place on the server before anything is published
    started = SagaStarted(saga_id="task-1", saga_type="agent_task", version=1)
    try:
        async with requester.watching("task-1") as first, requester.watching("task-1") as second:
            async with requester.watching("task-1") as third:
                pass  # one that ends early leaves the others watching
            assert third.empty()
            env = envelope_for(started, tenant="acme", correlation_id="task-1")
            await publish(requester.bus, started, env)
            async with asyncio.timeout(10):
                one, two = await first.get(), await second.get()
        assert one.payload == two.payload == started
    finally:
        await requester.close()
        await nc.close()


async def _answering(settings: Settings, answer: Callable[[Envelope], msgspec.Struct]) -> Client:
    """A second connection that answers every saga start at once, as a handler would."""
    nc = await connect(settings.nats_url or "", "requests-test-handler")
    js = nc.jetstream()

    async def on_start(msg: Msg) -> None:
        env = Envelope.from_headers(msg.headers)
        event = answer(env)
        # A refusal is the sagas service's own ``failed`` event, as the runtime sends it.
        entry = failed_event("sagas") if isinstance(event, CommandFailed) else of_type(type(event))
        reply = env.reply(entry.name, f"{env.message_id}.reply")
        await publish(Connected(nc, js), event, reply, entry=entry)

    await nc.subscribe("soma.cmd.*.sagas.start", cb=on_start)
    await nc.flush()
    return nc


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            lambda env: SagaStarted(saga_id=env.correlation_id, saga_type="t", version=1),
            SagaStarted,
        ),
        (
            lambda env: CommandFailed(command="sagas.start", error="no such saga type"),
            CommandFailed,
        ),
    ],
    ids=["its-answer", "its-refusal"],
)
async def test_a_requester_following_only_what_it_awaits_gets_what_is_sent_at_once(
    js,  # type: ignore[no-untyped-def]
    settings: Settings,
    answer: Callable[[Envelope], msgspec.Struct],
    expected: type[msgspec.Struct],
) -> None:
    handler = await _answering(settings, answer)
    nc = await connect(settings.nats_url or "", "requests-test")
    requester = Requester(nc, nc.jetstream(), subject=None)
    try:
        _, reply = await requester.request(
            SagaStart(saga_type="t"), tenant="acme", expect={"sagas.started"}, timeout=10
        )
        assert isinstance(reply.payload, expected)
    finally:
        await requester.close()
        await nc.close()
        await handler.close()


async def test_a_requester_following_named_events_receives_no_others(
    js,  # type: ignore[no-untyped-def]
    settings: Settings,
) -> None:
    nc = await connect(settings.nats_url or "", "requests-test")
    requester = Requester(nc, nc.jetstream(), subject=None)
    finished = SagaFinished(saga_id="task-2", saga_type="agent_task", state=SagaState.COMPLETED)
    started = SagaStarted(saga_id="task-2", saga_type="agent_task", version=1)
    try:
        async with requester.watching("task-2", ["sagas.started"]) as events:
            for event in (finished, started):  # in this order, on one connection
                env = envelope_for(event, tenant="acme", correlation_id="task-2")
                await publish(requester.bus, event, env)
            async with asyncio.timeout(10):
                first = await events.get()
            assert first.payload == started
            assert events.empty()
    finally:
        await requester.close()
        await nc.close()
