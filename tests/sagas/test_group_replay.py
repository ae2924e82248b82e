"""A group mode reply applied while an earlier transition waits for its commit: the earlier
state is committed as it was, so when the runner dies before the later commit, the reply
redelivered to a new runner is applied once, on state that does not hold it yet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bus.publish import envelope_for
from kernel.db import make_engine, migrate
from sagas import queries
from sagas.engine import Engine
from sagas.registry import Registry
from schemas.envelope import Envelope, new_id
from schemas.sagas import SagaStart
from schemas.tools import ToolResult
from tests.sagas.definitions import ALL


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sagas.db'}"
    await migrate(url, "sagas")
    engine = make_engine(url)
    yield engine
    await engine.dispose()


class Runner:
    """One engine as a runner process holds it; what it publishes is kept in ``sent``."""

    def __init__(self, db: AsyncEngine) -> None:
        self.engine = Engine(db, Registry(ALL))
        self.sent: list[dict[str, Any]] = []

        async def publish(rows: list[dict[str, Any]]) -> None:
            self.sent.extend(rows)

        self.engine.publish = publish

    def command(self, n: int, saga_id: str) -> str:
        """The id of the command that asked for effect ``n``."""
        call_id = f"{saga_id}:{n}".encode()
        return next(r["id"] for r in self.sent if call_id in r["body"])


def reply(saga_id: str, n: int, command_id: str) -> tuple[ToolResult, Envelope]:
    result = ToolResult(call_id=f"{saga_id}:{n}", name="effect", ok=True, output=f"{saga_id}:{n}")
    return result, envelope_for(result, tenant="acme", causation_id=command_id)


async def committed(runner: Runner, trigger: Any) -> None:
    """Apply a trigger and commit it, as the runner does before it acks."""
    task = asyncio.ensure_future(trigger)
    while not task.done():
        await asyncio.sleep(0.01)
        await runner.engine.store.flush()
    await task


async def test_a_reply_redelivered_after_its_runner_died_is_applied_once(
    db: AsyncEngine,
) -> None:
    first = Runner(db)
    saga_id = new_id()
    start = SagaStart(saga_type="grouped", saga_id=saga_id)
    await committed(first, first.engine.start(start, envelope_for(start, tenant="acme")))
    await committed(first, first.engine.reply(*reply(saga_id, 1, first.command(1, saga_id))))
    third = reply(saga_id, 3, first.command(3, saga_id))

    # The second reply's commit waits for the write lock; the third reply is applied meanwhile
    # and its own commit never happens: the runner dies.
    async with db.begin() as conn:
        await conn.execute(text("DELETE FROM saga_inbox WHERE message_id = 'none'"))
        second = asyncio.ensure_future(
            first.engine.reply(*reply(saga_id, 2, first.command(2, saga_id)))
        )
        while saga_id not in first.engine.store.pending:
            await asyncio.sleep(0.01)
        commit = asyncio.ensure_future(first.engine.store.flush())
        await asyncio.sleep(0.1)
        lost = asyncio.ensure_future(first.engine.reply(*third))
        while saga_id not in first.engine.store.pending:  # it waits for the next commit
            await asyncio.sleep(0.01)
        first.engine.store.pending.clear()  # which never comes
    await commit
    await second
    lost.cancel()

    after = Runner(db)
    after.sent = first.sent
    await committed(after, after.engine.reply(*third))
    await committed(after, after.engine.reply(*reply(saga_id, 4, after.command(4, saga_id))))
    row = await queries.get_instance(db, saga_id)
    assert row is not None and row["state"] == "completed", row
    assert row["result"] == {"outputs": [f"{saga_id}:{n}" for n in (1, 2, 3, 4)]}


async def test_a_reply_redelivered_after_its_transition_was_committed_is_dropped(
    db: AsyncEngine,
) -> None:
    first = Runner(db)
    saga_id = new_id()
    start = SagaStart(saga_type="grouped", saga_id=saga_id)
    await committed(first, first.engine.start(start, envelope_for(start, tenant="acme")))
    one = reply(saga_id, 1, first.command(1, saga_id))
    await committed(first, first.engine.reply(*one))

    after = Runner(db)  # the first died before its ack: the reply comes again
    await committed(after, after.engine.reply(*one))
    history = await queries.get_history(db, saga_id)
    assert [h["step"] for h in history if h["event"] == "step"] == ["g_first", "g_second"]
    assert after.sent == [], "no command sent again"
