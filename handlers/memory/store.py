"""Memory operations: add, search, get, delete, history — and storing a completed chat turn.

Plain async functions over ``Vectors`` (and a SQL engine for turns), so the bus handlers and
the gateway's memory routes share one implementation. Each takes the tenant explicitly and
hands it to ``vectors.scope``; none can see another tenant's points.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.memory import turns
from handlers.memory.errors import InvalidMemory
from handlers.memory.vectors import Vectors, point_id, scope
from schemas.memory import MemoryItem

MAX_TOP_K = 100
MAX_PAGE = 1000
# A listing reads and sorts its whole scope; past this many, narrow the scope or search.
MAX_LISTED = 10_000
MAX_TEXT_CHARS = 100_000


@dataclass(frozen=True)
class Memory:
    id: str
    text: str
    tenant: str
    created_at: datetime
    score: float = 0.0
    user: str | None = None
    agent: str | None = None
    session: str | None = None
    role: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def item(self) -> MemoryItem:
        return MemoryItem(
            id=self.id,
            text=self.text,
            score=self.score,
            user=self.user,
            session=self.session,
            metadata=self.metadata,
            created_at=self.created_at.timestamp(),
        )


async def add(
    vectors: Vectors,
    tenant: str,
    text: str,
    *,
    id: str | None = None,
    user: str | None = None,
    agent: str | None = None,
    session: str | None = None,
    role: str | None = None,
    metadata: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> Memory:
    """Store ``text``; with an ``id`` the call is idempotent (the same point is overwritten)."""
    if not text.strip():
        raise InvalidMemory("memory text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidMemory(f"memory text is longer than {MAX_TEXT_CHARS} characters")
    if id is not None and not id:
        raise InvalidMemory("a memory id, when given, must not be empty")
    _check_json(metadata)
    memory = Memory(
        id=id or uuid.uuid4().hex,
        text=text,
        tenant=tenant,
        created_at=created_at or datetime.now(UTC),
        user=user,
        agent=agent,
        session=session,
        role=role,
        metadata=dict(metadata or {}),
    )
    scope(tenant)  # validates the tenant before any work
    (vector,) = await vectors.embedder.embed([text])
    if not any(vector):
        raise InvalidMemory("memory text has nothing the embedder can represent")
    await vectors.index.upsert(point_id(tenant, memory.id), vector, _payload(memory))
    return memory


async def search(
    vectors: Vectors,
    tenant: str,
    query: str,
    *,
    top_k: int = 5,
    user: str | None = None,
    agent: str | None = None,
    session: str | None = None,
    metadata: dict[str, Any] | None = None,
    min_score: float | None = None,
) -> list[Memory]:
    """The ``top_k`` memories of ``tenant`` most similar to ``query``, best first."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidMemory(f"top_k must be between 1 and {MAX_TOP_K}")
    where = scope(tenant, user=user, agent=agent, session=session, metadata=metadata)
    if not query.strip():
        return []
    (vector,) = await vectors.embedder.embed([query])
    if not any(vector):
        return []
    hits = await vectors.index.query(vector, where, top_k, min_score)
    return [_memory(hit.payload, hit.score) for hit in hits]


async def listing(
    vectors: Vectors,
    tenant: str,
    *,
    user: str | None = None,
    session: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[Memory], int]:
    """A page of the memories in scope, newest first, and how many the scope holds.

    The index promises no order, so the whole scope is read and sorted here; a scope larger
    than ``MAX_LISTED`` is refused with what to narrow it by rather than paged wrongly.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidMemory(f"limit must be between 1 and {MAX_PAGE}")
    if offset < 0:
        raise InvalidMemory("offset must not be negative")
    where = scope(tenant, user=user, session=session)
    total = await vectors.index.count(where)
    if total > MAX_LISTED:
        raise InvalidMemory(
            f"{total} memories are in scope, more than {MAX_LISTED} can be listed; "
            "narrow it by user or session, or search"
        )
    found = [_memory(p) for p in await vectors.index.payloads(where, limit=max(total, 1))]
    found.sort(key=lambda m: (m.created_at, m.id), reverse=True)
    return found[offset : offset + limit], total


async def get(vectors: Vectors, tenant: str, id: str) -> Memory | None:
    found = await vectors.index.payloads(scope(tenant, refs=[id]), limit=1)
    return _memory(found[0]) if found else None


async def delete(
    vectors: Vectors,
    tenant: str,
    ids: list[str] | None = None,
    *,
    user: str | None = None,
    agent: str | None = None,
    session: str | None = None,
) -> int:
    """Delete by ids and/or everything of a user, agent or session; returns how many went."""
    if ids is None and user is None and agent is None and session is None:
        raise InvalidMemory("say what to delete: ids, user, agent or session")
    where = scope(tenant, refs=ids, user=user, agent=agent, session=session)
    found = await vectors.index.count(where)
    if found:
        await vectors.index.delete(where)
    return found


async def store_turn(
    vectors: Vectors,
    engine: AsyncEngine,
    tenant: str,
    *,
    turn_id: str,
    text: str,
    role: str,
    user: str | None = None,
    session: str | None = None,
    metadata: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> bool:
    """Remember a completed turn, once: True the first time, False on any repeat.

    The point is written first (an idempotent upsert keyed by the turn id) and the history row
    second, whose insert decides ``created``; a crash between the two is repaired by the retry.
    """
    turn = turns.Turn(
        tenant=tenant,
        turn_id=turn_id,
        role=role,
        text=text,
        session=session,
        user=user,
        created_at=at or datetime.now(UTC),
    )
    turns.check(turn)
    await add(
        vectors,
        tenant,
        text,
        id=turn_id,
        user=user,
        session=session,
        role=role,
        metadata=metadata,
        created_at=turn.created_at,
    )
    return await turns.record(engine, turn)


async def history(
    engine: AsyncEngine,
    tenant: str,
    session: str,
    *,
    limit: int = 100,
    user: str | None = None,
) -> list[turns.Turn]:
    """The last ``limit`` turns of a session, oldest first."""
    return await turns.of_session(engine, tenant, session, limit=limit, user=user)


async def clear_history(engine: AsyncEngine, tenant: str, session: str) -> int:
    """Forget a session's turns (its semantic memories go with ``delete(session=...)``)."""
    return await turns.clear(engine, tenant, session)


def _check_json(metadata: dict[str, Any] | None) -> None:
    try:
        json.dumps(metadata or {})
    except (TypeError, ValueError) as exc:
        raise InvalidMemory(f"metadata must be JSON: {exc}") from exc


def _payload(memory: Memory) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "tenant": memory.tenant,
        "ref": memory.id,
        "text": memory.text,
        "metadata": memory.metadata,
        "created_at": memory.created_at.isoformat(),
    }
    for key in ("user", "agent", "session", "role"):
        value = getattr(memory, key)
        if value is not None:
            payload[key] = value
    return payload


def _memory(payload: dict[str, Any], score: float = 0.0) -> Memory:
    return Memory(
        id=payload["ref"],
        text=payload["text"],
        tenant=payload["tenant"],
        created_at=datetime.fromisoformat(payload["created_at"]),
        score=score,
        user=payload.get("user"),
        agent=payload.get("agent"),
        session=payload.get("session"),
        role=payload.get("role"),
        metadata=payload.get("metadata") or {},
    )
