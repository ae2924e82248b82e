"""Reads of the saga store never wait for its writer: on SQLite a load, the timer pass and a
query begin deferred and read the WAL's snapshot while a group commit holds the write lock; a
group mode start's read of its id runs in the event loop's thread and sees every commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bus.publish import envelope_for
from kernel.db import make_engine, migrate
from sagas import queries
from sagas.engine import Engine
from sagas.registry import Registry
from sagas.storage import storage_for
from schemas.sagas import SagaStart
from tests.sagas.definitions import ALL


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sagas.db'}"
    await migrate(url, "sagas")
    engine = make_engine(url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def writing(db: AsyncEngine) -> AsyncIterator[None]:
    """A write transaction held open, as a group commit holds one while it writes."""
    async with db.begin() as conn:
        await conn.execute(text("DELETE FROM saga_inbox WHERE message_id = 'none'"))
        yield


async def test_a_query_reads_while_a_commit_holds_the_write_lock(
    db: AsyncEngine, writing: None
) -> None:
    async with asyncio.timeout(5):  # a writer would wait for the lock: busy_timeout is 30 s
        assert await queries.get_instance(db, "no-such-saga") is None


async def test_the_timer_pass_reads_while_a_commit_holds_the_write_lock(
    db: AsyncEngine, writing: None
) -> None:
    engine = Engine(db, Registry(ALL))
    async with asyncio.timeout(5):
        assert await engine.due(time.time()) == []


async def test_a_start_reads_whether_its_id_exists_while_a_commit_holds_the_write_lock(
    db: AsyncEngine, writing: None
) -> None:
    storage = storage_for(db)
    began = time.monotonic()
    assert await storage.read("no-such-saga") is None
    assert time.monotonic() - began < 0.5, "the read waited for the writer"
    storage.close()


async def test_a_start_sees_an_instance_committed_after_its_last_read(db: AsyncEngine) -> None:
    storage = storage_for(db)
    assert await storage.read("s-1") is None  # the read's connection is open from here on
    cmd = SagaStart(saga_type="three_steps", saga_id="s-1", input={})
    await Engine(db, Registry(ALL)).start(cmd, envelope_for(cmd, tenant="acme"))

    row = await storage.read("s-1")
    assert row is not None and row["type"] == "three_steps" and row["state"] == "running"
    storage.close()
