"""Conversation history in SQL, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from handlers.memory import store, turns
from handlers.memory.errors import InvalidMemory


def new(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def turn(tenant: str, session: str | None, turn_id: str, text: str, **extra) -> turns.Turn:
    return turns.Turn(
        tenant=tenant, session=session, turn_id=turn_id, role="user", text=text, **extra
    )


async def test_history_lists_turns_in_the_order_they_were_stored(engine) -> None:
    tenant, session = new("t"), new("s")
    # Timestamps deliberately run backwards: order is the order of storing, not of clocks.
    start = datetime(2030, 1, 1, tzinfo=UTC)
    for i in range(5):
        await turns.record(
            engine, turn(tenant, session, f"turn-{i}", f"text {i}", created_at=start - timedelta(i))
        )
    history = await store.history(engine, tenant, session)
    assert [t.turn_id for t in history] == [f"turn-{i}" for i in range(5)]
    assert [t.seq for t in history] == sorted(t.seq for t in history if t.seq is not None)


async def test_history_keeps_what_was_stored(engine) -> None:
    tenant, session = new("t"), new("s")
    at = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    await turns.record(
        engine,
        turns.Turn(
            tenant=tenant,
            session=session,
            user="ann",
            turn_id="x",
            role="assistant",
            text="Hello, Ann — ça va?",
            created_at=at,
        ),
    )
    (only,) = await store.history(engine, tenant, session)
    assert (only.user, only.role, only.text, only.created_at) == (
        "ann",
        "assistant",
        "Hello, Ann — ça va?",
        at,
    )


async def test_a_turn_stored_with_another_zone_reads_back_as_the_same_instant(engine) -> None:
    tenant, session = new("t"), new("s")
    at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=-5)))
    await turns.record(engine, turn(tenant, session, "x", "hi", created_at=at))
    (only,) = await store.history(engine, tenant, session)
    assert only.created_at == at
    assert only.created_at.utcoffset() == timedelta(0)


async def test_history_holds_only_the_asked_tenant_and_session(engine) -> None:
    tenant, other_tenant, session = new("t"), new("t"), new("s")
    await turns.record(engine, turn(tenant, session, "mine", "mine"))
    await turns.record(engine, turn(tenant, new("s"), "other-session", "other session"))
    await turns.record(engine, turn(other_tenant, session, "other-tenant", "other tenant"))
    history = await store.history(engine, tenant, session)
    assert [t.turn_id for t in history] == ["mine"]


async def test_the_same_turn_id_in_two_tenants_is_two_turns(engine) -> None:
    session = new("s")
    assert await turns.record(engine, turn(new("t"), session, "shared-id", "a"))
    assert await turns.record(engine, turn(new("t"), session, "shared-id", "b"))


async def test_recording_the_same_turn_twice_keeps_one_row(engine) -> None:
    tenant, session = new("t"), new("s")
    first = await turns.record(engine, turn(tenant, session, "again", "hello"))
    second = await turns.record(engine, turn(tenant, session, "again", "hello"))
    assert (first, second) == (True, False)
    assert len(await store.history(engine, tenant, session)) == 1


async def test_a_limit_returns_the_latest_turns_oldest_first(engine) -> None:
    tenant, session = new("t"), new("s")
    for i in range(6):
        await turns.record(engine, turn(tenant, session, f"t{i}", f"text {i}"))
    history = await store.history(engine, tenant, session, limit=2)
    assert [t.turn_id for t in history] == ["t4", "t5"]


async def test_history_can_be_narrowed_to_a_user(engine) -> None:
    tenant, session = new("t"), new("s")
    await turns.record(engine, turn(tenant, session, "1", "from ann", user="ann"))
    await turns.record(engine, turn(tenant, session, "2", "from bob", user="bob"))
    history = await store.history(engine, tenant, session, user="bob")
    assert [t.text for t in history] == ["from bob"]


async def test_clearing_a_session_removes_only_its_turns(engine) -> None:
    tenant, session, kept = new("t"), new("s"), new("s")
    await turns.record(engine, turn(tenant, session, "1", "one"))
    await turns.record(engine, turn(tenant, session, "2", "two"))
    await turns.record(engine, turn(tenant, kept, "3", "three"))
    assert await store.clear_history(engine, tenant, session) == 2
    assert await store.history(engine, tenant, session) == []
    assert len(await store.history(engine, tenant, kept)) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"turn_id": ""},
        {"role": ""},
        {"turn_id": "x" * 256},
        {"session": "s" * 256},
        {"tenant": "t" * 129},
    ],
)
async def test_a_turn_the_table_cannot_hold_is_refused(sqlite_engine, bad) -> None:
    fields = {"tenant": new("t"), "turn_id": "id", "role": "user", "text": "x", **bad}
    with pytest.raises(InvalidMemory):
        await turns.record(sqlite_engine, turns.Turn(**fields))


@pytest.mark.parametrize("limit", [0, turns.MAX_LIMIT + 1])
async def test_a_limit_outside_its_bounds_is_refused(sqlite_engine, limit) -> None:
    with pytest.raises(InvalidMemory):
        await store.history(sqlite_engine, new("t"), new("s"), limit=limit)
