"""``kernel.db.in_transaction``: a synchronous function's statements as one transaction, on a
SQLite file (in a worker thread) and on PostgreSQL (through ``run_sync``) alike."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from kernel.db import dispose, in_transaction, make_engine


@pytest.fixture
async def engine(engine: AsyncEngine) -> AsyncEngine:
    """The conftest's engine, with a table of notes."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
    return engine


async def _bodies(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [r[0] for r in await conn.execute(text("SELECT body FROM notes ORDER BY id"))]


async def test_every_statement_of_the_function_commits_together(engine: AsyncEngine) -> None:
    def write(conn: Connection) -> int:
        conn.execute(text("INSERT INTO notes VALUES (1, 'a')"))
        conn.execute(text("INSERT INTO notes VALUES (2, 'b')"))
        return 2

    assert await in_transaction(engine, write) == 2
    assert await _bodies(engine) == ["a", "b"]


async def test_a_function_that_raises_leaves_nothing_of_its_statements(
    engine: AsyncEngine,
) -> None:
    def half(conn: Connection) -> None:
        conn.execute(text("INSERT INTO notes VALUES (1, 'a')"))
        raise RuntimeError("stopped half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        await in_transaction(engine, half)
    assert await _bodies(engine) == []


async def test_its_writes_are_seen_by_the_async_engine_and_the_reverse(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO notes VALUES (1, 'from async')"))

    def read_then_write(conn: Connection) -> list[str]:
        seen = [r[0] for r in conn.execute(text("SELECT body FROM notes"))]
        conn.execute(text("INSERT INTO notes VALUES (2, 'from sync')"))
        return seen

    assert await in_transaction(engine, read_then_write) == ["from async"]
    assert await _bodies(engine) == ["from async", "from sync"]


async def test_on_a_sqlite_file_the_transaction_runs_off_the_event_loops_thread(
    tmp_path: Path,
) -> None:
    db = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    try:
        ran_on = await in_transaction(db, lambda conn: threading.get_ident())
        assert ran_on != threading.get_ident()
    finally:
        await dispose(db)


async def test_on_a_sqlite_file_a_transaction_on_the_loop_runs_in_the_loops_thread(
    tmp_path: Path,
) -> None:
    db = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    try:
        ran_on = await in_transaction(db, lambda conn: threading.get_ident(), on_loop=True)
        assert ran_on == threading.get_ident()
    finally:
        await dispose(db)


async def test_a_transaction_on_the_loop_waits_off_it_while_another_writer_holds_the_file(
    tmp_path: Path,
) -> None:
    """SQLite's busy handler would sleep with the loop stopped: the transaction goes to the
    worker thread and waits there, and the loop goes on meanwhile."""
    path = tmp_path / "one.db"
    db = make_engine(f"sqlite+aiosqlite:///{path}")
    async with db.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer, holding the write lock

    def write(conn: Connection) -> int:
        conn.execute(text("INSERT INTO notes (body) VALUES ('after the other writer')"))
        return threading.get_ident()

    try:
        writing = asyncio.create_task(in_transaction(db, write, on_loop=True))
        began = time.monotonic()
        await asyncio.sleep(0.2)
        assert time.monotonic() - began < 1.0  # the loop ran on meanwhile, never stopped
        assert not writing.done()  # the transaction waits for the other writer
        holder.execute("COMMIT")
        ran_on = await asyncio.wait_for(writing, 10)
        assert ran_on != threading.get_ident()
        assert await _bodies(db) == ["after the other writer"]
    finally:
        holder.close()
        await dispose(db)


async def test_a_transaction_on_the_loop_commits_its_statements_together(
    engine: AsyncEngine,
) -> None:
    def write(conn: Connection) -> int:
        conn.execute(text("INSERT INTO notes (id, body) VALUES (1, 'one')"))
        conn.execute(text("INSERT INTO notes (id, body) VALUES (2, 'two')"))
        return 2

    assert await in_transaction(engine, write, on_loop=True) == 2
    assert await _bodies(engine) == ["one", "two"]


async def test_a_transaction_on_the_loop_that_raises_leaves_nothing(engine: AsyncEngine) -> None:
    def write(conn: Connection) -> None:
        conn.execute(text("INSERT INTO notes (id, body) VALUES (1, 'half')"))
        raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        await in_transaction(engine, write, on_loop=True)
    assert await _bodies(engine) == []
