"""An engine of ``kernel.db`` on each database a test runs against: a SQLite file and a
throwaway PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kernel.db import dispose, make_engine
from tests.servers import database


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path, "kernel.db") as url:
        yield url


@pytest.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    db = make_engine(url)
    yield db
    await dispose(db)
