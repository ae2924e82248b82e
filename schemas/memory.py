"""Memory: semantic recall and storage, always scoped by tenant (from the envelope) and user."""

from typing import Any

from schemas.base import Message


class MemoryItem(Message):
    id: str
    text: str
    score: float = 0.0
    user: str | None = None
    session: str | None = None
    metadata: dict[str, Any] = {}


class MemoryRecall(Message):
    query: str
    user: str | None = None
    session: str | None = None
    top_k: int = 5


class MemoryRecalled(Message):
    items: list[MemoryItem] = []


class MemoryStore(Message):
    """Store one completed turn; ``turn_id`` makes a repeated store a no-op."""

    turn_id: str
    text: str
    user: str | None = None
    session: str | None = None
    role: str = "user"
    metadata: dict[str, Any] = {}


class MemoryStored(Message):
    turn_id: str
    created: bool = True
