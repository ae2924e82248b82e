"""The saga tables behind one interface, with a SQLite and a PostgreSQL implementation.

The engine decides; this module reads and writes. What differs between the two databases lives
here only: how an insert skips a duplicate, and how a transaction holds an instance while it
decides (PostgreSQL locks the row; SQLite's ``BEGIN IMMEDIATE`` already holds the database's one
write lock, see kernel/db.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Select

from kernel.db import point_reader, reader
from sagas import tables

# Statements built once, so SQLAlchemy compiles each once: they run on every transition.
BY_ID = select(tables.instances).where(tables.instances.c.id == bindparam("saga_id"))
# The instances whose timer is due at ``now``, soonest first, ``limit`` at most.
DUE = (
    select(tables.instances.c.id)
    .where(
        and_(
            tables.instances.c.wake_at.is_not(None), tables.instances.c.wake_at <= bindparam("now")
        )
    )
    .order_by(tables.instances.c.wake_at)
    .limit(bindparam("limit"))
)
# Write the columns the parameters name if the instance is still at ``_rev``.
AT_REV = tables.instances.update().where(
    and_(tables.instances.c.id == bindparam("_id"), tables.instances.c.rev == bindparam("_rev"))
)


class Storage:
    def __init__(self, db: AsyncEngine) -> None:
        self.db = db
        # Reads that decide nothing alone (a hot instance's load, the timer pass, queries) take
        # no write lock, so they never queue behind a group commit.
        self.reads = reader(db)
        self.insert_new_inbox = self.insert_new(tables.inbox)
        self.load_holding = self.holding(BY_ID)

    def close(self) -> None:
        """Let go of what the storage holds beside ``db`` (whose owner disposes it)."""

    def insert_new(self, table: Table) -> Any:
        """An insert that skips rows whose key is already there."""
        raise NotImplementedError

    def holding(self, stmt: Select[Any]) -> Select[Any]:
        """``stmt`` made to hold what it reads until the transaction ends."""
        raise NotImplementedError

    async def record_inbox(
        self, conn: AsyncConnection, saga_id: str, message_id: str, now: float
    ) -> bool:
        """Record that ``message_id`` reached ``saga_id``; False if it had already."""
        row = {"saga_id": saga_id, "message_id": message_id, "at": now}
        return bool((await conn.execute(self.insert_new_inbox, row)).rowcount)

    async def load(self, conn: AsyncConnection, saga_id: str) -> dict[str, Any] | None:
        """The instance, held until ``conn``'s transaction ends."""
        row = (await conn.execute(self.load_holding, {"saga_id": saga_id})).mappings().first()
        return dict(row) if row is not None else None

    async def read(self, saga_id: str) -> dict[str, Any] | None:
        """The stored instance, without holding it."""
        async with self.reads.connect() as conn:
            row = (await conn.execute(BY_ID, {"saga_id": saga_id})).mappings().first()
        return dict(row) if row is not None else None

    async def due(self, now: float, limit: int) -> list[str]:
        """The ids of instances whose timer is due at ``now`` (the timer pass, 5 times a second)."""
        async with self.reads.connect() as conn:
            return list((await conn.execute(DUE, {"now": now, "limit": limit})).scalars())

    async def save(
        self, conn: AsyncConnection, saga_id: str, rev: int, values: dict[str, Any]
    ) -> bool:
        """Write ``values`` if the instance is still at ``rev``; False if it moved on."""
        result = await conn.execute(AT_REV, {**values, "_id": saga_id, "_rev": rev})
        return result.rowcount == 1


class SqliteStorage(Storage):
    def __init__(self, db: AsyncEngine) -> None:
        super().__init__(db)
        # A group mode start reads whether its id exists before it sends its first command:
        # through aiosqlite that read was the longest wait of a chat turn in the runner.
        self.points = point_reader(db)

    async def read(self, saga_id: str) -> dict[str, Any] | None:
        if self.points is None:
            return await super().read(saga_id)
        with self.points.connect() as conn:
            row = conn.execute(BY_ID, {"saga_id": saga_id}).mappings().first()
        return dict(row) if row is not None else None

    async def due(self, now: float, limit: int) -> list[str]:
        # An indexed read of a few ids: on the loop it takes microseconds, through aiosqlite
        # it cost the runner 1.6 ms of CPU five times a second.
        if self.points is None:
            return await super().due(now, limit)
        with self.points.connect() as conn:
            return list(conn.execute(DUE, {"now": now, "limit": limit}).scalars())

    def close(self) -> None:
        if self.points is not None:
            self.points.dispose()

    def insert_new(self, table: Table) -> Any:
        return sqlite.insert(table).on_conflict_do_nothing()

    def holding(self, stmt: Select[Any]) -> Select[Any]:
        return stmt  # the transaction began IMMEDIATE: it holds the write lock already


class PostgresStorage(Storage):
    def insert_new(self, table: Table) -> Any:
        return postgresql.insert(table).on_conflict_do_nothing()

    def holding(self, stmt: Select[Any]) -> Select[Any]:
        return stmt.with_for_update()


def storage_for(db: AsyncEngine) -> Storage:
    return PostgresStorage(db) if db.dialect.name == "postgresql" else SqliteStorage(db)
