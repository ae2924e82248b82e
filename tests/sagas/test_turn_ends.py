"""A direct turn whose gateway stops before publishing its end is ended by the saga runner,
which reads every event: its first answer starts a deadline (``SOMA_TURN_DEADLINE``), its end
takes it off, and a deadline that passes publishes the end under the id the gateway's own would
have had (sagas/turns.py). Runner processes on a real nats-server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
from sqlalchemy import select

from bus.connection import connect
from bus.consume import reply_id
from bus.publish import envelope_for, publish
from bus.service import Connected
from kernel.db import make_engine, migrate
from sagas import turns
from sagas.tables import turn_watch
from sagas.turns import TurnWatch
from schemas.chat import ChatTurnFinished
from schemas.common import FailureCode
from schemas.envelope import Envelope, new_id, turn_end_id, turn_step_id
from schemas.memory import MemoryRecalled
from schemas.policy import PolicyEvaluated
from schemas.slm import ChatMessage, SlmCompleted
from tests.e2e.trail import events_of
from tests.sagas.test_durability import Runners
from tests.servers import NatsServer

DEADLINE = 1.5  # seconds from a turn's first answer


@pytest.fixture
def runners(module_nats: NatsServer, database_url: str) -> Iterator[Runners]:
    runners = Runners(module_nats.url, database_url, {"SOMA_TURN_DEADLINE": str(DEADLINE)})
    try:
        yield runners
    finally:
        runners.stop_all()


@pytest.fixture
async def bus(module_nats: NatsServer) -> AsyncIterator[Connected]:
    nc = await connect(module_nats.url, "turn-ends")
    try:
        yield Connected(nc, nc.jetstream(), time.time)
    finally:
        await nc.close()


async def answer(bus: Connected, turn: str, step: str, message: msgspec.Struct) -> None:
    """``message`` published as a handler answers the gateway's ``step`` command of ``turn``."""
    asked = turn_step_id(turn, step)
    env = envelope_for(
        message,
        tenant="acme",
        actor="dev",
        correlation_id=turn,
        causation_id=asked,
        message_id=reply_id(asked),
    )
    await publish(bus, message, env)


async def gateway_end(bus: Connected, turn: str) -> None:
    end = ChatTurnFinished(state="completed", started_at=time.time())
    env = envelope_for(
        end, tenant="acme", actor="dev", correlation_id=turn, message_id=turn_end_id(turn)
    )
    await publish(bus, end, env)


async def ends_of(
    server: NatsServer, turn: str, wait: float
) -> list[tuple[Envelope, ChatTurnFinished]]:
    """The ends stored for ``turn`` once ``wait`` seconds have passed."""
    await asyncio.sleep(wait)
    return [
        (Envelope.from_headers(m.headers or {}), msgspec.json.decode(m.data, type=ChatTurnFinished))
        for kind, m in await events_of(server, "acme", turn)
        if kind == "gateway.turn_finished"
    ]


ALLOWED = PolicyEvaluated(decision_id="d", decision="allow", stage="prompt")


async def test_a_turn_whose_gateway_never_ends_it_is_ended_failed_after_its_deadline(
    runners: Runners, bus: Connected, module_nats: NatsServer
) -> None:
    runners.start()
    turn = new_id()
    before = time.time()
    await answer(bus, turn, "prompt", ALLOWED)
    [(env, end)] = await ends_of(module_nats, turn, DEADLINE + 3)
    assert env.message_id == turn_end_id(turn)
    assert (env.tenant, env.actor, env.correlation_id) == ("acme", "dev", turn)
    assert end.state == "failed"
    assert end.error_code == FailureCode.UNAVAILABLE
    assert before <= end.started_at <= before + DEADLINE


async def test_a_turn_its_gateway_ended_is_not_ended_again(
    runners: Runners, bus: Connected, module_nats: NatsServer
) -> None:
    runners.start()
    turn = new_id()
    await answer(bus, turn, "prompt", ALLOWED)
    await answer(bus, turn, "recall", MemoryRecalled())
    await gateway_end(bus, turn)
    ends = await ends_of(module_nats, turn, DEADLINE + 3)
    assert [end.state for _, end in ends] == ["completed"]


async def test_an_end_read_before_the_turns_first_answer_still_counts(
    runners: Runners, bus: Connected, module_nats: NatsServer
) -> None:
    """The runner handles events concurrently and a redelivery comes late: the order the
    first answer and the end are read in does not matter."""
    runners.start()
    turn = new_id()
    await gateway_end(bus, turn)
    await asyncio.sleep(0.5)
    await answer(bus, turn, "recall", MemoryRecalled())
    ends = await ends_of(module_nats, turn, DEADLINE + 3)
    assert [end.state for _, end in ends] == ["completed"]


async def test_a_pass_through_turn_is_not_watched(
    runners: Runners, bus: Connected, module_nats: NatsServer
) -> None:
    """A pass-through turn's one command is the model's; it has no end to wait for."""
    runners.start()
    turn = new_id()
    done = SlmCompleted(
        model="m", provider="openai", message=ChatMessage(role="assistant", content="hi")
    )
    await answer(bus, turn, "slm", done)
    assert await ends_of(module_nats, turn, DEADLINE + 3) == []


async def test_a_runner_killed_while_it_watches_leaves_the_turn_to_the_next(
    runners: Runners, bus: Connected, module_nats: NatsServer, database_url: str
) -> None:
    first = runners.start()
    turn = new_id()
    await answer(bus, turn, "prompt", ALLOWED)
    db = make_engine(database_url)
    try:
        async with asyncio.timeout(20):
            while True:  # the watch is stored, and then the runner dies
                async with db.connect() as conn:
                    found = await conn.execute(
                        turn_watch.select().where(turn_watch.c.correlation_id == turn)
                    )
                    if found.first() is not None:
                        break
                await asyncio.sleep(0.05)
    finally:
        await db.dispose()
    runners.kill(first)
    await asyncio.sleep(DEADLINE + 1)  # the deadline passes with no runner
    runners.start()
    ends = await ends_of(module_nats, turn, 3)
    assert [end.state for _, end in ends] == ["failed"]


async def test_turns_that_start_together_are_each_watched_and_ended_once(
    runners: Runners, bus: Connected, module_nats: NatsServer
) -> None:
    """Their watches are written in group commits; more than one group's worth at once."""
    runners.start()
    turns = [new_id() for _ in range(40)]
    await asyncio.gather(*(answer(bus, turn, "prompt", ALLOWED) for turn in turns))
    await asyncio.sleep(DEADLINE + 3)
    ends = [await ends_of(module_nats, turn, 0) for turn in turns]
    assert [[end.state for _, end in found] for found in ends] == [["failed"]] * len(turns)


async def test_rows_of_turns_ended_longer_ago_than_a_deadline_are_forgotten(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past any redelivery of their first answers; a few at a time. A turn still watched, and
    one ended lately, are kept."""
    monkeypatch.setattr(turns, "FORGET_AT_ONCE", 2)
    await migrate(database_url, "sagas")
    db = make_engine(database_url)
    now = 1_000.0
    watch = TurnWatch(db, 10.0, lambda: now)

    def first_answer(turn: str) -> Envelope:
        asked = turn_step_id(turn, "prompt")
        return Envelope(
            message_id=reply_id(asked),
            correlation_id=turn,
            causation_id=asked,
            tenant="acme",
            schema="policy.evaluated",
        )

    def end(turn: str) -> Envelope:
        return Envelope(
            message_id=turn_end_id(turn),
            correlation_id=turn,
            tenant="acme",
            schema="gateway.turn_finished",
        )

    try:
        old, lately, watched = [new_id() for _ in range(3)], new_id(), new_id()
        for turn in [*old, lately, watched]:
            await watch.saw(ALLOWED, first_answer(turn))
        for turn in old:
            await watch.saw(ChatTurnFinished(state="completed", started_at=now), end(turn))
        now += 5
        await watch.saw(ChatTurnFinished(state="completed", started_at=now), end(lately))
        now += 7  # the old ones ended 12 s ago, the late one 7 s ago
        assert await watch.forget() == 3
        async with db.connect() as conn:
            rows = await conn.execute(select(turn_watch.c.correlation_id))
            assert set(rows.scalars()) >= {lately, watched}
            assert not set(old) & set(rows.scalars())
    finally:
        await db.dispose()
