"""The SQL store shared by sagas and handlers: one metadata, migrations applied by Alembic.

SQLite (aiosqlite) by default, PostgreSQL (asyncpg) when ``DATABASE_URL`` says so — one code
path chosen by settings.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # Let BEGIN below take the write lock up front: concurrent writers then queue on
            # busy_timeout instead of failing when a read transaction tries to upgrade.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A fixed pool: under load, tasks wait for a connection instead of opening (and closing)
    # overflow connections, which costs more than the statements themselves.
    pool = int(os.environ.get("SOMA_DB_POOL", "20"))
    return create_async_engine(url, pool_size=pool, max_overflow=0, pool_recycle=1800)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _upgrade_sync(url: str) -> None:
    command.upgrade(alembic_config(url), "heads")


async def migrate(url: str) -> None:
    """Apply every migration (all branches) — safe to call on every start."""
    await asyncio.to_thread(_upgrade_sync, url)
