"""Conversation history: the ordered turns of each session, in SQL.

Order is ``seq``, a database-assigned ascending key, rather than timestamps: clocks of several
handler replicas may disagree, insertion order may not. ``(tenant, turn_id)`` is unique, which
makes recording a redelivered turn a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.memory.errors import InvalidMemory
from kernel.db import driver, in_transaction, metadata, sqlite_cursor, sqlite_time

MAX_LIMIT = 1000

memory_turns = Table(
    "memory_turns",
    metadata,
    # SQLite only auto-increments an INTEGER PRIMARY KEY.
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("session", String(255), nullable=True),
    Column("user", String(255), nullable=True),
    Column("turn_id", String(255), nullable=False),
    Column("role", String(32), nullable=False),
    Column("text", Text(), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant", "turn_id", name="uq_memory_turns_tenant_turn_id"),
    Index("ix_memory_turns_tenant_session_seq", "tenant", "session", "seq"),
)


@dataclass(frozen=True)
class Turn:
    tenant: str
    turn_id: str
    role: str
    text: str
    session: str | None = None
    user: str | None = None
    created_at: datetime | None = None
    seq: int | None = None


def check(turn: Turn) -> None:
    """Refuse what the table cannot hold, before anything is written anywhere."""
    required = {"tenant": turn.tenant, "turn_id": turn.turn_id, "role": turn.role}
    for name, value in required.items():
        if not value:
            raise InvalidMemory(f"a turn needs a {name}")
    fields: dict[str, str | None] = {**required, "session": turn.session, "user": turn.user}
    for name, given in fields.items():
        width = getattr(memory_turns.c[name].type, "length", None)
        if given is not None and width is not None and len(given) > width:
            raise InvalidMemory(f"turn {name} is longer than {width} characters")


# A chat turn's row, written through the driver on either database: SQLAlchemy's execution of
# the one statement (its context, bind processing, result) cost several times the insert itself.
_RECORD = (
    'INSERT INTO memory_turns (tenant, session, "user", turn_id, role, text, created_at)'
    " VALUES ({}) ON CONFLICT (tenant, turn_id) DO NOTHING"
)
_RECORD_PG = _RECORD.format("$1, $2, $3, $4, $5, $6, $7")
_RECORD_SQLITE = _RECORD.format("?, ?, ?, ?, ?, ?, ?")


async def record(engine: AsyncEngine, turn: Turn) -> bool:
    """Append a turn; False when this tenant already has a turn with that id."""
    check(turn)
    at = turn.created_at or datetime.now(UTC)
    row = (turn.tenant, turn.session, turn.user, turn.turn_id, turn.role, turn.text)
    # Every chat turn's memory write lands here. On PostgreSQL: one statement through asyncpg's
    # own pool, its own transaction, one round trip (BEGIN, INSERT, COMMIT were three).
    pool = await driver(engine)
    if pool is not None:
        return bool(await pool.execute(_RECORD_PG, *row, at) == "INSERT 0 1")
    # On SQLite one synchronous transaction (in a worker thread) on the driver's own cursor.
    stamp = sqlite_time(at)

    def write(conn: Connection) -> bool:
        return bool(sqlite_cursor(conn).execute(_RECORD_SQLITE, (*row, stamp)).rowcount == 1)

    return await in_transaction(engine, write)


async def of_session(
    engine: AsyncEngine,
    tenant: str,
    session: str,
    *,
    limit: int = 100,
    user: str | None = None,
) -> list[Turn]:
    """The last ``limit`` turns of a session, oldest first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidMemory(f"limit must be between 1 and {MAX_LIMIT}")
    query = select(memory_turns).where(
        memory_turns.c.tenant == tenant, memory_turns.c.session == session
    )
    if user is not None:
        query = query.where(memory_turns.c.user == user)
    query = query.order_by(memory_turns.c.seq.desc()).limit(limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [
        Turn(
            tenant=row["tenant"],
            turn_id=row["turn_id"],
            role=row["role"],
            text=row["text"],
            session=row["session"],
            user=row["user"],
            created_at=_utc(row["created_at"]),
            seq=row["seq"],
        )
        for row in reversed(rows)
    ]


async def clear(engine: AsyncEngine, tenant: str, session: str) -> int:
    """Forget a session's history; returns how many turns were removed."""
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(memory_turns).where(
                memory_turns.c.tenant == tenant, memory_turns.c.session == session
            )
        )
    return result.rowcount


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def forget(
    engine: AsyncEngine, tenant: str, turn_ids: list[str], *, user: str | None = None
) -> int:
    """Forget the turns with these ids (of ``user`` only, when given); returns how many."""
    query = delete(memory_turns).where(
        memory_turns.c.tenant == tenant, memory_turns.c.turn_id.in_(turn_ids)
    )
    if user is not None:
        query = query.where(memory_turns.c.user == user)
    async with engine.begin() as conn:
        result = await conn.execute(query)
    return result.rowcount
