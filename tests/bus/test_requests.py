"""Request/await on a real nats-server: waiters are found by correlation id."""

from __future__ import annotations

import asyncio

from bus.connection import connect
from bus.publish import envelope_for, publish
from bus.request import Requester
from kernel.settings import Settings
from schemas.sagas import SagaStarted


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
