"""The usage report: rollups summed over whole UTC days, grouped as asked, one tenant at a time."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bus.errors import Rejected
from handlers.analytics import rollups
from handlers.analytics.report import InvalidWindow, report, window
from handlers.analytics.service import answer
from schemas.analytics import AnalyticsReport
from schemas.envelope import new_id
from schemas.sagas import SagaFinished, SagaStarted
from tests.analytics.conftest import DAY, NOON, completion, envelope


async def _call(
    engine: AsyncEngine,
    tenant: str,
    model: str,
    *,
    at: float = NOON,
    actor: str = "u-ada",
    prompt: int = 100,
    cost: float = 0.01,
    latency: float = 100.0,
    correlation_id: str | None = None,
) -> None:
    await rollups.model_completed(
        engine,
        completion(model, prompt=prompt, completion_tokens=10, cost=cost, latency=latency),
        envelope("slm.completed", tenant=tenant, at=at, actor=actor, correlation_id=correlation_id),
    )


async def _turn(
    engine: AsyncEngine, tenant: str, saga_type: str, seconds: float, models: list[str]
) -> None:
    saga_id = new_id()
    await rollups.saga_started(
        engine,
        SagaStarted(saga_id=saga_id, saga_type=saga_type, version=1),
        envelope("sagas.started", tenant=tenant, correlation_id=saga_id, at=NOON),
    )
    for model in models:
        await _call(engine, tenant, model, correlation_id=saga_id, at=NOON + 0.1)
    await rollups.saga_finished(
        engine,
        SagaFinished(saga_id=saga_id, saga_type=saga_type, state="completed"),
        envelope("sagas.finished", tenant=tenant, correlation_id=saga_id, at=NOON + seconds),
    )


async def test_rows_are_grouped_by_model_and_ordered_by_name(
    engine: AsyncEngine, tenant: str
) -> None:
    await _call(engine, tenant, "claude-haiku", prompt=10, latency=100)
    await _call(engine, tenant, "gpt-4o-mini", prompt=20, latency=200)
    await _call(engine, tenant, "claude-haiku", prompt=30, latency=300)

    rows = await report(engine, tenant, None, None, ["model"])

    assert [(r.group["model"], r.requests, r.prompt_tokens, r.latency_ms_avg) for r in rows] == [
        ("claude-haiku", 2, 40, 200.0),
        ("gpt-4o-mini", 1, 20, 200.0),
    ]


async def test_rows_are_grouped_by_every_dimension_asked_for(
    engine: AsyncEngine, tenant: str
) -> None:
    await _call(engine, tenant, "m1", actor="u-ada", at=NOON)
    await _call(engine, tenant, "m1", actor="u-bob", at=NOON)
    await _call(engine, tenant, "m1", actor="u-ada", at=NOON + DAY)
    await _call(engine, tenant, "m2", actor="u-ada", at=NOON + DAY)

    rows = await report(engine, tenant, None, None, ["day", "user", "model"])

    assert [r.group for r in rows] == [
        {"day": "2026-03-10", "user": "u-ada", "model": "m1"},
        {"day": "2026-03-10", "user": "u-bob", "model": "m1"},
        {"day": "2026-03-11", "user": "u-ada", "model": "m1"},
        {"day": "2026-03-11", "user": "u-ada", "model": "m2"},
    ]
    assert all(r.requests == 1 for r in rows)


async def test_no_grouping_gives_one_row_of_totals(engine: AsyncEngine, tenant: str) -> None:
    await _call(engine, tenant, "m1", prompt=10, cost=0.25)
    await _call(engine, tenant, "m2", prompt=5, cost=0.5, at=NOON + DAY)

    [row] = await report(engine, tenant, None, None, [])

    assert (row.group, row.requests, row.prompt_tokens) == ({}, 2, 15)
    assert row.cost_usd == pytest.approx(0.75)


async def test_a_tenant_without_usage_gets_no_rows(engine: AsyncEngine, tenant: str) -> None:
    assert await report(engine, tenant, None, None, []) == []
    assert await report(engine, tenant, None, None, ["model", "day"]) == []


async def test_a_tenant_sees_only_its_own_usage(engine: AsyncEngine, tenant: str) -> None:
    await _call(engine, tenant, "m1", prompt=7)
    await _call(engine, f"{tenant}-other", "m1", prompt=1000)

    [row] = await report(engine, tenant, None, None, ["model"])

    assert row.prompt_tokens == 7


async def test_every_tenant_at_once_when_none_is_named(engine: AsyncEngine, tenant: str) -> None:
    await _call(engine, f"{tenant}-a", "m1", prompt=1)
    await _call(engine, f"{tenant}-b", "m1", prompt=2)

    rows = await report(engine, None, None, None, ["tenant"])

    mine = {
        r.group["tenant"]: r.prompt_tokens for r in rows if r.group["tenant"].startswith(tenant)
    }
    assert mine == {f"{tenant}-a": 1, f"{tenant}-b": 2}


async def test_the_window_takes_the_whole_utc_days_it_touches(
    engine: AsyncEngine, tenant: str
) -> None:
    for day in range(4):
        await _call(engine, tenant, "m1", at=NOON + day * DAY, prompt=10**day)

    # From late on the second day to early on the third: both days, whole.
    rows = await report(engine, tenant, NOON + DAY + 11 * 3600, NOON + 2 * DAY - 11 * 3600, [])

    assert [r.prompt_tokens for r in rows] == [10 + 100]


async def test_open_ends_reach_the_first_and_last_day_recorded(
    engine: AsyncEngine, tenant: str
) -> None:
    for day in range(3):
        await _call(engine, tenant, "m1", at=NOON + day * DAY, prompt=10**day)

    [since_second] = await report(engine, tenant, NOON + DAY, None, [])
    [until_second] = await report(engine, tenant, None, NOON + DAY, [])

    assert (since_second.prompt_tokens, until_second.prompt_tokens) == (110, 11)


async def test_by_saga_type_a_request_is_a_saga_run_with_its_model_calls_tokens(
    engine: AsyncEngine, tenant: str
) -> None:
    await _turn(engine, tenant, "chat_turn", 2.0, ["m1"])
    await _turn(engine, tenant, "chat_turn", 4.0, ["m1", "m2"])
    await _turn(engine, tenant, "agent_task", 60.0, ["m1", "m1", "m1"])

    rows = await report(engine, tenant, None, None, ["saga_type"])

    assert [
        (r.group["saga_type"], r.requests, r.prompt_tokens, r.latency_ms_avg) for r in rows
    ] == [
        ("agent_task", 1, 300, 60000.0),
        ("chat_turn", 2, 300, 3000.0),
    ]


async def test_by_saga_type_and_model_a_request_is_a_model_call(
    engine: AsyncEngine, tenant: str
) -> None:
    await _turn(engine, tenant, "chat_turn", 2.0, ["m1", "m1"])

    [row] = await report(engine, tenant, None, None, ["saga_type", "model"])

    assert (row.group, row.requests, row.latency_ms_avg) == (
        {"saga_type": "chat_turn", "model": "m1"},
        2,
        100.0,
    )


async def test_an_unknown_dimension_is_refused(engine: AsyncEngine, tenant: str) -> None:
    with pytest.raises(ValueError, match="cannot group by colour"):
        await report(engine, tenant, None, None, ["model", "colour"])


def test_a_window_that_ends_before_it_starts_is_invalid() -> None:
    with pytest.raises(InvalidWindow):
        window(NOON + 1, NOON)


async def test_a_report_command_answers_for_the_envelopes_tenant_over_whole_days(
    engine: AsyncEngine, tenant: str
) -> None:
    await _call(engine, tenant, "m1", prompt=3)
    await _call(engine, f"{tenant}-other", "m1", prompt=1000)

    reported = await answer(
        engine,
        AnalyticsReport(since=NOON, until=NOON + 60, group_by=["model", "day"]),
        envelope("analytics.report", tenant=tenant),
    )

    assert [(r.group, r.prompt_tokens) for r in reported.rows] == [
        ({"model": "m1", "day": "2026-03-10"}, 3)
    ]
    assert (reported.since, reported.until) == (NOON - 12 * 3600, NOON + 12 * 3600)


async def test_a_report_command_with_an_inverted_window_is_rejected(
    engine: AsyncEngine, tenant: str
) -> None:
    with pytest.raises(Rejected, match="after"):
        await answer(
            engine,
            AnalyticsReport(since=NOON, until=NOON - 1),
            envelope("analytics.report", tenant=tenant),
        )
