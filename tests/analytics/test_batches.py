"""Events are counted a batch per transaction and acked after the commit; a batch delivered
again — its process killed between commit and ack, or mid-batch — counts nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bus import runtime
from bus.connection import connect
from bus.publish import envelope_for, publish
from bus.service import Connected
from bus.streams import provision
from handlers.analytics import rollups
from handlers.analytics.report import report
from handlers.analytics.service import build
from handlers.analytics.tables import processed
from kernel.db import make_engine, migrate
from kernel.settings import Settings
from schemas.catalogue import STREAMS, by_subject
from schemas.envelope import Envelope
from schemas.sagas import SagaStarted
from tests.analytics.test_on_the_bus import (
    CONSUMER,
    TENANTS,
    TURNS,
    Expected,
    _assert_model_rows_match,
    _drained,
    _publish_turns,
)
from tests.servers import NatsServer, database, nats_server

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Store:
    server: NatsServer
    settings: Settings
    bus: Connected
    engine: AsyncEngine

    @property
    def js(self) -> JetStreamContext:
        return self.bus.js


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path, "analytics.db") as url:
        yield url


@pytest.fixture
async def store(database_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    with nats_server() as server:
        settings = Settings.model_validate(
            {
                "NATS_URL": server.url,
                "DATABASE_URL": database_url,
                "SOMA_DATA_DIR": tmp_path,
                "SOMA_ACK_WAIT": 2,  # as in analytics_proc: the consumer is the same
            }
        )
        await migrate(database_url, "analytics")
        nc = await connect(server.url, "analytics-batches-test")
        await provision(nc.jetstream(), settings)
        engine = make_engine(database_url)
        try:
            yield Store(server, settings, Connected(nc, nc.jetstream()), engine)
        finally:
            await nc.close()
            await engine.dispose()


async def _stream_events(js: JetStreamContext, first: int, last: int) -> list[tuple]:  # type: ignore[type-arg]
    """The events at stream sequences ``first``..``last``, decoded as the runtime decodes them."""
    events = []
    for seq in range(first, last + 1):
        raw = await js.get_msg(STREAMS["evt"], seq)
        entry = by_subject(raw.subject)
        events.append((entry.name, entry.decode(raw.data), Envelope.from_headers(raw.headers)))
    return events


async def _counted_ids(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(processed)) or 0)


async def _acked_and_holding(js: JetStreamContext) -> bool:
    """True once the consumer has acked a batch and holds another delivered but not acked."""
    try:
        info = await js.consumer_info(STREAMS["evt"], CONSUMER)
    except NotFoundError:
        return False
    acked = int(info.ack_floor.consumer_seq or 0) if info.ack_floor else 0
    return acked > 0 and bool(info.num_ack_pending)


async def _held(js: JetStreamContext) -> int:
    info = await js.consumer_info(STREAMS["evt"], CONSUMER)
    return int(info.num_ack_pending or 0)


async def _assert_counted_once(engine: AsyncEngine, expected: Expected) -> None:
    for tenant in TENANTS:
        rows = await report(engine, tenant, None, None, ["model"])
        _assert_model_rows_match(rows, expected, tenant)
    turns = await report(engine, None, None, None, ["saga_type"])
    assert sum(r.requests for r in turns) == TURNS
    assert await _counted_ids(engine) == expected.events


async def test_a_batch_committed_but_never_acked_counts_once_when_delivered_again(
    store: Store,
) -> None:
    expected = await _publish_turns(store.bus, seed=7)
    # What a process killed between its commit and its acks leaves: the first half of the
    # events counted in one batch transaction, and none of them acked.
    half = await _stream_events(store.js, 1, expected.events // 2)
    assert await rollups.count_batch(store.engine, half) == len(half)

    running = await runtime.start(build(store.settings), store.settings)
    try:
        await _drained(store.js)
    finally:
        await running.stop()

    await _assert_counted_once(store.engine, expected)


async def test_a_batch_delivered_twice_in_one_transaction_counts_once(store: Store) -> None:
    expected = await _publish_turns(store.bus, seed=11)
    events = await _stream_events(store.js, 1, expected.events)

    assert await rollups.count_batch(store.engine, events + events) == expected.events
    await _assert_counted_once(store.engine, expected)


async def test_an_analytics_process_killed_mid_batch_leaves_every_event_counted_once(
    store: Store, tmp_path: Path
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.analytics.analytics_proc",
        store.server.url,
        str(store.settings.database_url),
        str(tmp_path),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        # The events go out while the process counts them; it dies after its first ack, while
        # it holds a batch it has not acked. Between the look and the kill it may ack that
        # batch and fetch no other; then the scenario is tried again on the events still to come.
        publishing = asyncio.create_task(_publish_turns(store.bus, seed=13))
        held = 0
        async with asyncio.timeout(60):
            while not held:
                while not await _acked_and_holding(store.js):
                    await asyncio.sleep(0.002)
                child.send_signal(signal.SIGSTOP)
                held = await _held(store.js)
                if not held:
                    child.send_signal(signal.SIGCONT)
        os.kill(child.pid, signal.SIGKILL)
        expected = await publishing
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    left = await _counted_ids(store.engine)

    running = await runtime.start(build(store.settings), store.settings)
    try:
        await _drained(store.js)
    finally:
        await running.stop()

    info = await store.js.consumer_info(STREAMS["evt"], CONSUMER)
    assert left < expected.events, "the process finished before it was killed"
    assert held and info.delivered.consumer_seq > expected.events  # what it held came again
    await _assert_counted_once(store.engine, expected)


async def test_events_in_hand_together_are_counted_in_batches(store: Store) -> None:
    expected = await _publish_turns(store.bus, seed=17)
    batches: list[int] = []
    service = build(store.settings)
    assert service.event_batches is not None
    count = service.event_batches.handler

    async def counting(batch: list) -> None:  # type: ignore[type-arg]
        batches.append(len(batch))
        await count(batch)

    service.event_batches = type(service.event_batches)(service.event_batches.names, counting)
    running = await runtime.start(service, store.settings)
    try:
        await _drained(store.js)
    finally:
        await running.stop()

    # A batch whose acks were late on a busy machine comes back and is handled again: what
    # holds is that it is then counted once.
    assert sum(batches) >= expected.events
    assert max(batches) > 1
    assert len(batches) < expected.events
    await _assert_counted_once(store.engine, expected)


async def test_events_a_few_milliseconds_apart_wait_for_each_other_in_one_batch(
    store: Store,
) -> None:
    service = build(store.settings)
    assert service.event_batches is not None and service.event_batches.linger > 0.1
    batches: list[int] = []
    count = service.event_batches.handler

    async def counting(batch: list) -> None:  # type: ignore[type-arg]
        batches.append(len(batch))
        await count(batch)

    service.event_batches = replace(service.event_batches, handler=counting)
    running = await runtime.start(service, store.settings)
    try:
        for i in range(5):
            event = SagaStarted(saga_id=f"turn-{i}", saga_type="chat_turn", version=2)
            await publish(store.bus, event, envelope_for(event, tenant="acme"))
            await asyncio.sleep(0.01)
        await _drained(store.js)
    finally:
        await running.stop()
    assert sum(batches) == 5
    assert len(batches) <= 2  # one alone would have gone at once, each in its own batch
