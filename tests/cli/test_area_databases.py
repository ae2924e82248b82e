"""The embedded store: a SQLite file per area, so areas never queue on one write lock; and a data
folder from before, with every area in ``kernel.db``, keeps its data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kernel.db import AREAS, migrate
from kernel.settings import Settings
from tests.cli.conftest import Soma, clean_env


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _versions(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT version_num FROM alembic_version")}


def test_each_area_names_its_own_sqlite_file_under_the_data_folder(tmp_path: Path) -> None:
    settings = Settings.model_validate({"SOMA_DATA_DIR": tmp_path, "DATABASE_URL": ""})

    urls = {settings.resolved_database_url(area) for area in AREAS}

    assert urls == {f"sqlite+aiosqlite:///{(tmp_path / f'{a}.db').resolve()}" for a in AREAS}


def test_database_url_is_one_database_for_every_area(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"SOMA_DATA_DIR": tmp_path, "DATABASE_URL": "postgresql://soma@db/soma"}
    )

    urls = {settings.resolved_database_url(area) for area in AREAS}

    assert urls == {"postgresql+asyncpg://soma@db/soma"}


async def test_an_area_file_holds_only_its_own_tables(tmp_path: Path) -> None:
    await migrate(f"sqlite+aiosqlite:///{tmp_path / 'analytics.db'}", "analytics")

    assert {t for t in _tables(tmp_path / "analytics.db") if t != "alembic_version"} == {
        "analytics_correlations",
        "analytics_processed",
        "analytics_sagas",
        "analytics_unattributed",
        "analytics_usage_daily",
    }


async def test_areas_write_at_once_without_waiting_for_each_other(tmp_path: Path) -> None:
    """A write transaction held open in one area's file does not block another area's."""
    for area in ("sagas", "analytics"):
        await migrate(f"sqlite+aiosqlite:///{tmp_path / f'{area}.db'}", area)
    holder = sqlite3.connect(tmp_path / "analytics.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("DELETE FROM analytics_processed")
    try:
        other = sqlite3.connect(tmp_path / "sagas.db", timeout=0, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # would raise "database is locked" in a shared file
        other.execute("DELETE FROM saga_inbox")
        other.execute("COMMIT")
        other.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_soma_migrate_gives_each_area_its_tables_from_an_old_shared_file(
    tmp_path: Path,
) -> None:
    shared = f"sqlite+aiosqlite:///{tmp_path / 'kernel.db'}"
    for area in AREAS:
        await migrate(shared, area)
    with sqlite3.connect(tmp_path / "kernel.db") as conn:
        conn.execute("INSERT INTO analytics_processed (message_id, seen_at) VALUES ('m-1', 1.0)")

    result = await Soma(clean_env(SOMA_DATA_DIR=str(tmp_path)))("migrate")

    assert result.exit_code == 0, result.stderr
    for area, prefix in AREAS.items():
        path = tmp_path / f"{area}.db"
        assert _tables(path) - {"alembic_version"}
        assert all(t.startswith(prefix) for t in _tables(path) - {"alembic_version"})
        assert all(v.startswith(f"{area}_") for v in _versions(path))
    with sqlite3.connect(tmp_path / "analytics.db") as conn:
        assert conn.execute("SELECT message_id FROM analytics_processed").fetchall() == [("m-1",)]


async def test_an_area_split_from_the_old_file_is_not_split_again(tmp_path: Path) -> None:
    shared = f"sqlite+aiosqlite:///{tmp_path / 'kernel.db'}"
    own = f"sqlite+aiosqlite:///{tmp_path / 'analytics.db'}"
    await migrate(shared, "analytics")
    await migrate(own, "analytics")
    with sqlite3.connect(tmp_path / "analytics.db") as conn:
        conn.execute("INSERT INTO analytics_processed (message_id, seen_at) VALUES ('new', 2.0)")

    await migrate(own, "analytics")

    with sqlite3.connect(tmp_path / "analytics.db") as conn:
        assert conn.execute("SELECT message_id FROM analytics_processed").fetchall() == [("new",)]
