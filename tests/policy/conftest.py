"""Fixtures for policy: the packaged default rule set, tenant rule folders, and the token budget
store on SQLite and on a throwaway database of the real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.policy.rules import RuleSet, load_default
from soma.db import alembic_config, make_engine
from tests.servers import postgres_database


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def default_rules() -> RuleSet:
    return load_default()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policy"
    folder.mkdir()
    return folder


async def _migrate_policy_branch(url: str) -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(url), "policy@head")


@pytest.fixture(scope="session")
async def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('policy-sql') / 'soma.db'}"
    await _migrate_policy_branch(url)
    engine = make_engine(url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
async def postgresql_engine(postgresql_url: str) -> AsyncIterator[AsyncEngine]:
    await _migrate_policy_branch(postgresql_url)
    engine = make_engine(postgresql_url)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> AsyncEngine:
    """The budget store on each database the project supports."""
    return request.getfixturevalue(f"{request.param}_engine")
