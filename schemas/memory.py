"""Memory: semantic recall and storage, always scoped by tenant (from the envelope) and user.

``caller_role`` is the role of the caller the command acts for. The memory process lets a role
the tenant grants tenant-wide memory reach any user (``user=None``: every user); every other role
reaches only its own user's memories — the envelope's actor — and naming another user is
refused.
"""

from typing import Any

from schemas.base import Message


class MemoryItem(Message):
    id: str
    text: str
    score: float = 0.0
    user: str | None = None
    session: str | None = None
    metadata: dict[str, Any] = {}
    # Unix seconds when the memory was stored.
    created_at: float | None = None


class MemoryRecall(Message):
    """The memories most like ``query``; ``user=None`` reaches as far as the caller's role does."""

    query: str
    user: str | None = None
    session: str | None = None
    top_k: int = 5
    caller_role: str | None = None


class MemoryRecalled(Message):
    items: list[MemoryItem] = []


class MemoryStore(Message):
    """Store one completed turn; ``turn_id`` makes a repeated store a no-op. ``role`` is the
    speaker recorded in the history, ``caller_role`` the role of the caller it is stored for."""

    turn_id: str
    text: str
    user: str | None = None
    session: str | None = None
    role: str = "user"
    metadata: dict[str, Any] = {}
    caller_role: str | None = None


class MemoryStored(Message):
    turn_id: str
    created: bool = True
