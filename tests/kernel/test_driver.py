"""``kernel.db.driver``: asyncpg's own pool on a PostgreSQL engine, for the single statements a
reply waits for; none on SQLite, whose hot statements run through ``in_transaction``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kernel.db import dispose, driver, make_engine
from tests.servers import POSTGRES_ADMIN, postgres_database


async def test_a_sqlite_engine_has_no_driver_pool(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'kernel.db'}")
    try:
        assert await driver(engine) is None
    finally:
        await dispose(engine)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
async def postgres_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(postgres_url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
    yield engine
    await dispose(engine)


async def test_what_the_driver_writes_the_engine_reads(postgres_engine: AsyncEngine) -> None:
    pool = await driver(postgres_engine)
    assert pool is not None
    assert await pool.execute("INSERT INTO notes VALUES ($1, $2)", 1, "a") == "INSERT 0 1"
    async with postgres_engine.connect() as conn:
        assert (await conn.execute(text("SELECT body FROM notes"))).scalar_one() == "a"


async def test_callers_arriving_together_share_one_pool(postgres_engine: AsyncEngine) -> None:
    pools = await asyncio.gather(*(driver(postgres_engine) for _ in range(8)))
    assert all(pool is pools[0] for pool in pools)


async def test_dispose_closes_the_pool_and_a_later_caller_opens_another(
    postgres_engine: AsyncEngine,
) -> None:
    first = await driver(postgres_engine)
    assert first is not None
    await dispose(postgres_engine)
    assert first.is_closing()
    second = await driver(postgres_engine)
    assert second is not None and second is not first
    assert await second.fetchval("SELECT count(*) FROM notes") == 0


async def test_a_pool_that_could_not_open_is_opened_by_the_next_caller() -> None:
    name = f"soma_test_{uuid.uuid4().hex[:10]}"
    engine = make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}")
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await driver(engine)  # the database is not there yet
        await admin.execute(f'CREATE DATABASE "{name}"')
        pool = await driver(engine)
        assert pool is not None
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await dispose(engine)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_the_pool_connects_as_the_engine_does_with_its_url_query(postgres_url: str) -> None:
    """SQLAlchemy's spelling of asyncpg's options (``ssl``, ``prepared_statement_cache_size``)
    is not a libpq DSN's: the pool takes them as the engine's dialect reads them."""
    engine = make_engine(f"{postgres_url}?ssl=disable&prepared_statement_cache_size=0")
    try:
        pool = await driver(engine)
        assert pool is not None
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await dispose(engine)
