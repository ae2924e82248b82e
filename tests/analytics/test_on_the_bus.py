"""The analytics process on a real nats-server: 100 chat turns' events in, a report that agrees
with them out — per tenant, per model and per saga type, directly and over the bus."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import msgspec
import pytest
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from bus import runtime
from bus.connection import connect
from bus.publish import publish
from bus.request import Requester
from bus.service import Connected
from handlers.analytics.report import report
from handlers.analytics.service import build
from kernel.db import make_engine
from kernel.settings import Settings
from schemas.analytics import AnalyticsReport, AnalyticsReported, UsageRow
from schemas.base import Usage
from schemas.catalogue import STREAMS, failed_event
from schemas.common import CommandFailed
from schemas.envelope import Envelope, new_id
from schemas.sagas import SagaFinished, SagaStarted
from schemas.slm import ChatMessage, SlmCompleted
from tests.servers import NatsServer, nats_server, postgres_database

TENANTS = ("acme", "globex", "initech")
MODELS = {"gpt-4o-mini": "openai", "claude-3-5-haiku": "anthropic", "soma-local-dev": "local"}
USERS = ("u-ada", "u-bob", "u-cy")
TURNS = 100
CONSUMER = "analytics-events"


@dataclass
class Expected:
    """What the published events add up to: (tenant, model) and (tenant, saga type) sums."""

    calls: defaultdict[tuple[str, str], list[SlmCompleted]] = field(
        default_factory=lambda: defaultdict(list)
    )
    failed_calls: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    turns: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failed_turns: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    events: int = 0


@dataclass
class Bus:
    server: NatsServer
    settings: Settings
    js: JetStreamContext
    requester: Requester
    engine: AsyncEngine
    running: runtime.Running | None = None


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
async def bus(
    database_url: str | None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Bus]:
    with nats_server() as server:
        settings = Settings.model_validate(
            {
                "NATS_URL": server.url,
                "SOMA_DATA_DIR": tmp_path_factory.mktemp("analytics-bus"),
                "DATABASE_URL": database_url,
                "SOMA_RETRY_INITIAL": 0.05,
            }
        )
        running = await runtime.start(build(settings), settings)
        nc = await connect(server.url, "analytics-test")
        requester = Requester(nc, nc.jetstream())
        await requester.start()
        engine = make_engine(settings.resolved_database_url("analytics"))
        bus = Bus(server, settings, nc.jetstream(), requester, engine, running)
        try:
            yield bus
        finally:
            await requester.close()
            await nc.close()
            if bus.running is not None:
                await bus.running.stop()
            await engine.dispose()


def _envelope(
    schema: str, tenant: str, saga_id: str, actor: str, message_id: str, at: float
) -> Envelope:
    return Envelope(
        message_id=message_id,
        correlation_id=saga_id,
        causation_id=None,
        tenant=tenant,
        actor=actor,
        schema=schema,
        timestamp=at,
    )


async def _publish_turns(bus: Connected, seed: int) -> Expected:
    """Publish the events of ``TURNS`` chat turns as the saga runner and slm handler would."""
    rng = random.Random(seed)
    expected = Expected()
    for _ in range(TURNS):
        tenant, actor = rng.choice(TENANTS), rng.choice(USERS)
        saga_id, started_at = new_id(), time.time()
        await publish(
            bus,
            SagaStarted(saga_id=saga_id, saga_type="chat_turn", version=1),
            _envelope("sagas.started", tenant, saga_id, actor, f"{new_id()}.reply", started_at),
        )
        model = rng.choice(list(MODELS))
        rounds = rng.randint(1, 3)  # a model call, then one more per tool round
        for seq in range(rounds):
            mid = f"{saga_id}.1.{3 + seq}.0.1.reply"
            if rng.random() < 0.05:
                failed = CommandFailed(command="slm.complete", error="rate limited", retryable=True)
                env = _envelope("slm.failed", tenant, saga_id, actor, mid, time.time())
                await publish(bus, failed, env, entry=failed_event("slm"))
                expected.failed_calls[tenant] += 1
                continue
            prompt, completion = rng.randint(20, 4000), rng.randint(1, 800)
            event = SlmCompleted(
                model=model,
                provider=MODELS[model],
                message=ChatMessage(role="assistant", content="…"),
                usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
                cost_usd=round(prompt * 1.5e-7 + completion * 6e-7, 9),
                latency_ms=rng.uniform(40, 3000),
            )
            await publish(
                bus, event, _envelope("slm.completed", tenant, saga_id, actor, mid, time.time())
            )
            expected.calls[(tenant, model)].append(event)
        state = "failed" if rng.random() < 0.1 else "completed"
        finished_at = started_at + rng.uniform(0.1, 5.0)
        await publish(
            bus,
            SagaFinished(saga_id=saga_id, saga_type="chat_turn", state=state),
            _envelope(
                "sagas.finished", tenant, saga_id, actor, f"{saga_id}.1.finished", finished_at
            ),
        )
        expected.turns[tenant].append((finished_at - started_at) * 1000)
        expected.failed_turns[tenant] += state == "failed"
        expected.events += rounds + 2
    return expected


async def _drained(js: JetStreamContext, timeout: float = 60) -> None:
    """Wait until the analytics consumer has taken and acknowledged every event."""
    async with asyncio.timeout(timeout):
        while True:
            info = await js.consumer_info(STREAMS["evt"], CONSUMER)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def published(bus: Bus) -> Expected:
    expected = await _publish_turns(bus.requester.bus, seed=20261125)
    await _drained(bus.js)
    return expected


def _by_model(rows: list[UsageRow]) -> dict[str, UsageRow]:
    return {r.group["model"]: r for r in rows}


def _assert_model_rows_match(rows: list[UsageRow], expected: Expected, tenant: str) -> None:
    by_model = _by_model(rows)
    models = {m for (t, m) in expected.calls if t == tenant}
    assert set(by_model) == models | ({""} if expected.failed_calls[tenant] else set())
    for model in models:
        calls = expected.calls[(tenant, model)]
        row = by_model[model]
        assert row.requests == len(calls)
        assert row.errors == 0
        assert row.prompt_tokens == sum(c.usage.prompt_tokens for c in calls)
        assert row.completion_tokens == sum(c.usage.completion_tokens for c in calls)
        assert row.cost_usd == pytest.approx(sum(c.cost_usd for c in calls), rel=1e-9)
        assert row.latency_ms_avg == pytest.approx(
            sum(c.latency_ms for c in calls) / len(calls), rel=1e-9
        )
    if expected.failed_calls[tenant]:
        assert by_model[""].errors == by_model[""].requests == expected.failed_calls[tenant]


@pytest.mark.parametrize("tenant", TENANTS)
async def test_usage_per_model_equals_the_sums_of_the_published_events(
    bus: Bus, published: Expected, tenant: str
) -> None:
    rows = await report(bus.engine, tenant, None, None, ["model"])

    _assert_model_rows_match(rows, published, tenant)


@pytest.mark.parametrize("tenant", TENANTS)
async def test_usage_per_saga_type_counts_every_turn_and_its_duration(
    bus: Bus, published: Expected, tenant: str
) -> None:
    [row] = await report(bus.engine, tenant, None, None, ["saga_type"])

    durations = published.turns[tenant]
    calls = [c for (t, _), cs in published.calls.items() if t == tenant for c in cs]
    assert row.group == {"saga_type": "chat_turn"}
    assert (row.requests, row.errors) == (len(durations), published.failed_turns[tenant])
    assert row.latency_ms_avg == pytest.approx(sum(durations) / len(durations), rel=1e-6)
    assert row.prompt_tokens == sum(c.usage.prompt_tokens for c in calls)
    assert row.cost_usd == pytest.approx(sum(c.cost_usd for c in calls), rel=1e-9)


async def test_every_turn_is_counted_once_across_tenants(bus: Bus, published: Expected) -> None:
    rows = await report(bus.engine, None, None, None, ["saga_type"])

    assert sum(r.requests for r in rows) == TURNS


async def test_the_report_over_the_bus_is_the_report_of_the_callers_tenant(
    bus: Bus, published: Expected
) -> None:
    _, reply = await bus.requester.request(
        AnalyticsReport(group_by=["model"]),
        tenant="globex",
        expect={"analytics.reported"},
        timeout=20,
    )

    assert isinstance(reply.payload, AnalyticsReported)
    _assert_model_rows_match(reply.payload.rows, published, "globex")


async def test_a_report_with_an_inverted_window_fails_over_the_bus(bus: Bus) -> None:
    _, reply = await bus.requester.request(
        AnalyticsReport(since=2000.0, until=1000.0),
        tenant="acme",
        expect={"analytics.reported"},
        timeout=20,
    )

    assert reply.schema == "analytics.failed"
    assert "after" in msgspec.convert(reply.payload, CommandFailed).error


async def test_a_replay_of_the_whole_stream_counts_nothing_twice(
    bus: Bus, published: Expected
) -> None:
    before = await report(bus.engine, None, None, None, ["tenant", "model", "saga_type"])
    assert bus.running is not None
    await bus.running.stop()
    bus.running = None
    await bus.js.delete_consumer(STREAMS["evt"], CONSUMER)

    # A fresh consumer starts at the first event kept: every event is delivered again.
    bus.running = await runtime.start(build(bus.settings), bus.settings)
    await _drained(bus.js)
    info = await bus.js.consumer_info(STREAMS["evt"], CONSUMER)

    assert info.delivered.consumer_seq >= published.events
    assert await report(bus.engine, None, None, None, ["tenant", "model", "saga_type"]) == before
