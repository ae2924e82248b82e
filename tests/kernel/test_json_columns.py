"""JSON columns on every engine ``kernel.db`` makes: what goes in comes back, through the async
engine and the synchronous writer alike, and rows written by older releases still read."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import JSON, Column, Connection, Integer, MetaData, Table, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from kernel.db import dispose, in_transaction, make_engine
from tests.servers import database

notes = Table(
    "json_notes", MetaData(), Column("id", Integer, primary_key=True), Column("doc", JSON)
)

DOC = {"text": "naïve café ✓", "n": 2**70, "ratio": 0.1, "nested": [{"a": None}, [1, 2]]}


@pytest.fixture
async def noted(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` with the table of documents."""
    async with engine.begin() as conn:
        await conn.run_sync(notes.metadata.create_all)
    return engine


async def _doc(engine: AsyncEngine, id: int) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(select(notes.c.doc).where(notes.c.id == id))).scalar_one()


async def test_a_document_written_by_the_async_engine_reads_back_equal(noted: AsyncEngine) -> None:
    async with noted.begin() as conn:
        await conn.execute(notes.insert(), {"id": 1, "doc": DOC})
    assert await _doc(noted, 1) == DOC


async def test_a_document_written_in_a_transaction_function_reads_back_equal(
    noted: AsyncEngine,
) -> None:
    def write(conn: Connection) -> None:
        conn.execute(notes.insert(), {"id": 2, "doc": DOC})

    await in_transaction(noted, write)
    assert await _doc(noted, 2) == DOC


async def test_a_sqlite_document_with_nan_from_an_older_release_still_reads(
    tmp_path: Path,
) -> None:
    with database("sqlite", tmp_path, "old.db") as url:
        db = make_engine(url)
        try:
            async with db.begin() as conn:
                await conn.run_sync(notes.metadata.create_all)
                # What the standard library's json.dumps wrote for a float that was not a number.
                await conn.execute(text("""INSERT INTO json_notes VALUES (3, '{"x": NaN}')"""))
            doc = await _doc(db, 3)
        finally:
            await dispose(db)
    assert isinstance(doc, dict) and doc["x"] != doc["x"]
