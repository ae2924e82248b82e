"""Counting events into daily rollups: each event once, under the right tenant, day and saga."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.analytics import rollups
from handlers.analytics.report import report
from handlers.analytics.tables import processed, unattributed
from schemas.chat import ChatTurnFinished
from schemas.common import CommandFailed
from schemas.envelope import Envelope, new_id
from schemas.sagas import SagaFinished, SagaStarted
from tests.analytics.conftest import DAY, NOON, completion, envelope


async def _start_saga(
    engine: AsyncEngine, tenant: str, saga_type: str = "chat_turn", at: float = NOON
) -> str:
    saga_id = new_id()
    await rollups.saga_started(
        engine,
        SagaStarted(saga_id=saga_id, saga_type=saga_type, version=1),
        envelope("sagas.started", tenant=tenant, correlation_id=saga_id, at=at),
    )
    return saga_id


async def _finish_saga(
    engine: AsyncEngine,
    tenant: str,
    saga_id: str,
    at: float,
    state: str = "completed",
    saga_type: str = "chat_turn",
) -> None:
    await rollups.saga_finished(
        engine,
        SagaFinished(saga_id=saga_id, saga_type=saga_type, state=state),
        envelope("sagas.finished", tenant=tenant, correlation_id=saga_id, at=at),
    )


async def test_a_completion_counts_its_tokens_cost_and_latency(
    engine: AsyncEngine, tenant: str
) -> None:
    event = completion("gpt-4o-mini", prompt=120, completion_tokens=30, cost=0.0021, latency=400)
    assert await rollups.model_completed(engine, event, envelope("slm.completed", tenant=tenant))

    [row] = await report(engine, tenant, None, None, ["model"])
    assert row.group == {"model": "gpt-4o-mini"}
    assert (row.requests, row.errors) == (1, 0)
    assert (row.prompt_tokens, row.completion_tokens) == (120, 30)
    assert row.cost_usd == pytest.approx(0.0021)
    assert row.latency_ms_avg == pytest.approx(400)


async def test_a_redelivered_event_is_counted_once(engine: AsyncEngine, tenant: str) -> None:
    env = envelope("slm.completed", tenant=tenant)
    event = completion(prompt=50, completion_tokens=5, cost=0.5)

    first = await rollups.model_completed(engine, event, env)
    again = await rollups.model_completed(engine, event, env)

    assert (first, again) == (True, False)
    [row] = await report(engine, tenant, None, None, ["model"])
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (1, 50, 5)
    assert row.cost_usd == pytest.approx(0.5)


async def test_a_redelivered_saga_end_is_counted_once(engine: AsyncEngine, tenant: str) -> None:
    saga_id = await _start_saga(engine, tenant)
    env = envelope("sagas.finished", tenant=tenant, correlation_id=saga_id, at=NOON + 2)
    event = SagaFinished(saga_id=saga_id, saga_type="chat_turn", state="failed")

    assert await rollups.saga_finished(engine, event, env)
    assert not await rollups.saga_finished(engine, event, env)

    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert (row.requests, row.errors) == (1, 1)


async def test_concurrent_events_of_one_row_all_count(engine: AsyncEngine, tenant: str) -> None:
    events = [completion(prompt=10 + i, completion_tokens=i, cost=0.01) for i in range(20)]
    await asyncio.gather(
        *(
            rollups.model_completed(engine, e, envelope("slm.completed", tenant=tenant))
            for e in events
        )
    )

    [row] = await report(engine, tenant, None, None, ["model"])
    assert row.requests == 20
    assert row.prompt_tokens == sum(e.usage.prompt_tokens for e in events)
    assert row.completion_tokens == sum(e.usage.completion_tokens for e in events)
    assert row.cost_usd == pytest.approx(0.2)


async def test_a_model_call_counts_under_the_saga_type_of_its_correlation(
    engine: AsyncEngine, tenant: str
) -> None:
    saga_id = await _start_saga(engine, tenant, "agent_task")
    await rollups.model_completed(
        engine, completion(), envelope("slm.completed", tenant=tenant, correlation_id=saga_id)
    )
    await rollups.model_completed(
        engine, completion(), envelope("slm.completed", tenant=tenant, correlation_id=new_id())
    )

    rows = await report(engine, tenant, None, None, ["model", "saga_type"])
    assert [(r.group["saga_type"], r.requests) for r in rows] == [("", 1), ("agent_task", 1)]


async def test_a_model_call_counted_before_its_saga_start_moves_to_the_saga_type(
    engine: AsyncEngine, tenant: str
) -> None:
    saga_id = new_id()
    await rollups.model_completed(
        engine,
        completion(prompt=70),
        envelope("slm.completed", tenant=tenant, correlation_id=saga_id),
    )
    [waiting] = await report(engine, tenant, None, None, ["saga_type"])
    assert (waiting.group, waiting.prompt_tokens) == ({"saga_type": ""}, 70)

    await rollups.saga_started(
        engine,
        SagaStarted(saga_id=saga_id, saga_type="chat_turn", version=1),
        envelope("sagas.started", tenant=tenant, correlation_id=saga_id),
    )

    [row] = await report(engine, tenant, None, None, ["model", "saga_type"])
    assert (row.group["saga_type"], row.requests, row.prompt_tokens) == ("chat_turn", 1, 70)


async def test_concurrent_start_and_calls_of_one_saga_all_count_under_its_type(
    engine: AsyncEngine, tenant: str
) -> None:
    saga_id = new_id()
    calls = [
        rollups.model_completed(
            engine, completion(), envelope("slm.completed", tenant=tenant, correlation_id=saga_id)
        )
        for _ in range(10)
    ]
    start = rollups.saga_started(
        engine,
        SagaStarted(saga_id=saga_id, saga_type="agent_task", version=1),
        envelope("sagas.started", tenant=tenant, correlation_id=saga_id),
    )
    await asyncio.gather(*calls[:5], start, *calls[5:])

    [row] = await report(engine, tenant, None, None, ["model", "saga_type"])
    assert (row.group["saga_type"], row.requests) == ("agent_task", 10)


async def test_a_saga_of_another_tenant_does_not_lend_its_type(
    engine: AsyncEngine, tenant: str
) -> None:
    saga_id = await _start_saga(engine, f"{tenant}-other", "agent_task")
    await rollups.model_completed(
        engine, completion(), envelope("slm.completed", tenant=tenant, correlation_id=saga_id)
    )

    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert row.group == {"saga_type": ""}


async def test_a_failed_model_call_counts_as_a_request_with_an_error(
    engine: AsyncEngine, tenant: str
) -> None:
    saga_id = await _start_saga(engine, tenant)
    failed = CommandFailed(command="slm.complete", error="model 'x' refused the request: 429")
    await rollups.model_failed(
        engine, failed, envelope("slm.failed", tenant=tenant, correlation_id=saga_id)
    )
    await rollups.model_completed(
        engine, completion(), envelope("slm.completed", tenant=tenant, correlation_id=saga_id)
    )

    [row] = await report(engine, tenant, None, None, [])
    assert (row.requests, row.errors) == (2, 1)
    rows = await report(engine, tenant, None, None, ["model"])
    assert [(r.group["model"], r.errors) for r in rows] == [("", 1), ("gpt-4o-mini", 0)]


async def test_a_saga_run_is_timed_from_its_start_to_its_end(
    engine: AsyncEngine, tenant: str
) -> None:
    fast = await _start_saga(engine, tenant, at=NOON)
    slow = await _start_saga(engine, tenant, at=NOON + 1)
    await _finish_saga(engine, tenant, fast, at=NOON + 0.5)
    await _finish_saga(engine, tenant, slow, at=NOON + 3.5)

    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert row.requests == 2
    assert row.latency_ms_avg == pytest.approx((500 + 2500) / 2)


async def test_a_saga_whose_start_was_not_seen_counts_without_a_duration(
    engine: AsyncEngine, tenant: str
) -> None:
    timed = await _start_saga(engine, tenant, at=NOON)
    await _finish_saga(engine, tenant, timed, at=NOON + 1)
    await _finish_saga(engine, tenant, new_id(), at=NOON + 9)

    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert row.requests == 2
    assert row.latency_ms_avg == pytest.approx(1000)


async def test_a_saga_end_counted_before_its_start_is_timed_when_the_start_arrives(
    engine: AsyncEngine, tenant: str
) -> None:
    saga_id = new_id()
    await _finish_saga(engine, tenant, saga_id, at=NOON + 2.5)
    await rollups.saga_started(
        engine,
        SagaStarted(saga_id=saga_id, saga_type="chat_turn", version=1),
        envelope("sagas.started", tenant=tenant, correlation_id=saga_id, at=NOON),
    )

    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert (row.requests, row.latency_ms_avg) == (1, pytest.approx(2500))


async def test_a_second_start_of_a_running_saga_changes_nothing(
    engine: AsyncEngine, tenant: str
) -> None:
    saga_id = await _start_saga(engine, tenant, at=NOON)
    await rollups.saga_started(
        engine,
        SagaStarted(saga_id=saga_id, saga_type="chat_turn", version=1),
        envelope("sagas.started", tenant=tenant, correlation_id=saga_id, at=NOON + 1),
    )
    await _finish_saga(engine, tenant, saga_id, at=NOON + 2)

    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert (row.requests, row.latency_ms_avg) == (1, pytest.approx(2000))


async def test_failed_sagas_are_errors_and_cancelled_or_terminated_ones_are_not(
    engine: AsyncEngine, tenant: str
) -> None:
    states = [
        "completed",
        "failed",
        "compensation_failed",
        "cancelled",
        "compensated",
        "terminated",
    ]
    for state in states:
        saga_id = await _start_saga(engine, tenant)
        await _finish_saga(engine, tenant, saga_id, at=NOON + 1, state=state)

    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert (row.requests, row.errors) == (6, 2)


async def test_a_saga_id_run_again_is_timed_from_its_new_start(
    engine: AsyncEngine, tenant: str
) -> None:
    saga_id = new_id()
    started = SagaStarted(saga_id=saga_id, saga_type="chat_turn", version=1)
    for start, end in ((NOON, NOON + 1), (NOON + 100, NOON + 103)):
        await rollups.saga_started(
            engine,
            started,
            envelope("sagas.started", tenant=tenant, correlation_id=saga_id, at=start),
        )
        await _finish_saga(engine, tenant, saga_id, at=end)

    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert row.requests == 2
    assert row.latency_ms_avg == pytest.approx((1000 + 3000) / 2)


async def test_a_refused_saga_start_counts_as_a_failed_run(
    engine: AsyncEngine, tenant: str
) -> None:
    refused = CommandFailed(command="sagas.start", error="no saga type 'chat_tur'")
    await rollups.saga_refused(engine, refused, envelope("sagas.failed", tenant=tenant))

    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert (row.group, row.requests, row.errors) == ({"saga_type": ""}, 1, 1)


async def test_an_event_counts_for_the_utc_day_it_was_published(
    engine: AsyncEngine, tenant: str
) -> None:
    before_midnight = NOON + 12 * 3600 - 1
    await rollups.model_completed(
        engine, completion(), envelope("slm.completed", tenant=tenant, at=before_midnight)
    )
    await rollups.model_completed(
        engine, completion(), envelope("slm.completed", tenant=tenant, at=before_midnight + 2)
    )

    rows = await report(engine, tenant, None, None, ["day"])
    assert [r.group["day"] for r in rows] == ["2026-03-10", "2026-03-11"]


async def test_pruning_forgets_old_event_ids_and_keeps_the_totals(
    engine: AsyncEngine, tenant: str
) -> None:
    old = envelope("slm.completed", tenant=tenant)
    await rollups.model_completed(engine, completion(prompt=5), old)
    cutoff = await _seen_at(engine, old.message_id) + 1
    recent = envelope("slm.completed", tenant=tenant)
    async with engine.begin() as conn:
        await conn.execute(
            processed.insert().values(message_id=recent.message_id, seen_at=cutoff + DAY)
        )

    await rollups.prune(engine, cutoff)

    assert await _seen_at(engine, old.message_id) is None
    assert await _seen_at(engine, recent.message_id) is not None
    # The call never saw its saga start: it stays counted, as outside any saga.
    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert (row.group, row.prompt_tokens) == ({"saga_type": ""}, 5)
    async with engine.connect() as conn:
        left = await conn.scalar(
            select(func.count()).select_from(unattributed).where(unattributed.c.tenant == tenant)
        )
    assert left == 0


async def _seen_at(engine: AsyncEngine, message_id: str) -> float | None:
    async with engine.connect() as conn:
        found = await conn.scalar(
            select(func.max(processed.c.seen_at)).where(processed.c.message_id == message_id)
        )
    return None if found is None else float(found)


async def test_an_event_twice_in_one_batch_is_counted_once(
    engine: AsyncEngine, tenant: str
) -> None:
    counted = ("slm.completed", completion(prompt=40), envelope("slm.completed", tenant=tenant))

    assert await rollups.count_batch(engine, [counted, counted]) == 1
    [row] = await report(engine, tenant, None, None, ["model"])
    assert (row.requests, row.prompt_tokens) == (1, 40)


async def test_a_batch_whose_events_were_partly_counted_before_counts_the_rest(
    engine: AsyncEngine, tenant: str
) -> None:
    batch = [
        ("slm.completed", completion(prompt=p), envelope("slm.completed", tenant=tenant))
        for p in (10, 20, 30)
    ]
    assert await rollups.count_batch(engine, batch[1:2]) == 1

    assert await rollups.count_batch(engine, batch) == 2
    [row] = await report(engine, tenant, None, None, ["model"])
    assert (row.requests, row.prompt_tokens) == (3, 60)


async def test_a_model_call_before_its_saga_start_in_one_batch_counts_under_the_saga_type(
    engine: AsyncEngine, tenant: str
) -> None:
    saga_id = new_id()
    call = envelope("slm.completed", tenant=tenant, correlation_id=saga_id)
    start = envelope("sagas.started", tenant=tenant, correlation_id=saga_id)
    batch = [
        ("slm.completed", completion(prompt=70), call),
        ("sagas.started", SagaStarted(saga_id=saga_id, saga_type="chat_turn", version=1), start),
    ]

    assert await rollups.count_batch(engine, batch) == 2
    [row] = await report(engine, tenant, None, None, ["model", "saga_type"])
    assert (row.group["saga_type"], row.requests, row.prompt_tokens) == ("chat_turn", 1, 70)


async def test_a_saga_end_before_its_start_in_one_batch_is_timed(
    engine: AsyncEngine, tenant: str
) -> None:
    saga_id = new_id()
    end = envelope("sagas.finished", tenant=tenant, correlation_id=saga_id, at=NOON + 2.5)
    start = envelope("sagas.started", tenant=tenant, correlation_id=saga_id, at=NOON)
    finished = SagaFinished(saga_id=saga_id, saga_type="chat_turn", state="completed")
    started = SagaStarted(saga_id=saga_id, saga_type="chat_turn", version=1)

    assert (
        await rollups.count_batch(
            engine, [("sagas.finished", finished, end), ("sagas.started", started, start)]
        )
        == 2
    )
    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert (row.requests, row.latency_ms_avg) == (1, pytest.approx(2500))


def _turn_end(
    tenant: str,
    turn_id: str,
    started: float,
    ended: float,
    state: Literal["completed", "failed"] = "completed",
) -> tuple[str, ChatTurnFinished, Envelope]:
    """A direct turn's end, as its gateway publishes it."""
    end = ChatTurnFinished(state=state, started_at=started)
    env = envelope(
        "gateway.turn_finished",
        tenant=tenant,
        correlation_id=turn_id,
        at=ended,
        message_id=f"{turn_id}.finished",
    )
    return ("gateway.turn_finished", end, env)


async def test_a_direct_turn_counts_as_a_chat_turn_run_timed_by_its_own_start(
    engine: AsyncEngine, tenant: str
) -> None:
    await rollups.count_batch(engine, [_turn_end(tenant, new_id(), NOON, NOON + 0.25)])
    await rollups.count_batch(
        engine, [_turn_end(tenant, new_id(), NOON, NOON + 0.75, state="failed")]
    )

    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert (row.group, row.requests, row.errors) == ({"saga_type": "chat_turn"}, 2, 1)
    assert row.latency_ms_avg == pytest.approx((250 + 750) / 2)


async def test_a_direct_turns_model_call_counts_under_chat_turn_whichever_comes_first(
    engine: AsyncEngine, tenant: str
) -> None:
    before, after = new_id(), new_id()
    await rollups.count_batch(
        engine,
        [
            (
                "slm.completed",
                completion(prompt=10),
                envelope("slm.completed", tenant=tenant, correlation_id=before),
            )
        ],
    )
    await rollups.count_batch(engine, [_turn_end(tenant, before, NOON, NOON + 1)])
    await rollups.count_batch(engine, [_turn_end(tenant, after, NOON, NOON + 1)])
    await rollups.count_batch(
        engine,
        [
            (
                "slm.completed",
                completion(prompt=30),
                envelope("slm.completed", tenant=tenant, correlation_id=after),
            )
        ],
    )

    [row] = await report(engine, tenant, None, None, ["model", "saga_type"])
    assert (row.group["saga_type"], row.requests, row.prompt_tokens) == ("chat_turn", 2, 40)


async def test_a_redelivered_direct_turn_end_is_counted_once(
    engine: AsyncEngine, tenant: str
) -> None:
    end = _turn_end(tenant, new_id(), NOON, NOON + 1)

    assert await rollups.count_batch(engine, [end]) == 1
    assert await rollups.count_batch(engine, [end]) == 0
    [row] = await report(engine, tenant, None, None, ["saga_type"])
    assert row.requests == 1
