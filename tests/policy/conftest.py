"""Fixtures for policy: the packaged default rule set, tenant rule folders, and the token budget
store on SQLite and on a throwaway database of the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.policy.rules import RuleSet, load_default
from tests.clock import Clock
from tests.servers import area_engines


@pytest.fixture(scope="session")
def default_rules() -> RuleSet:
    return load_default()


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policy"
    folder.mkdir()
    return folder


sqlite_engine, postgresql_url, postgresql_engine, engine = area_engines("policy")
