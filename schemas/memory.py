"""Memory: semantic recall and storage, always scoped by tenant (from the envelope) and user.

``caller_role`` is the role of the caller the command acts for. The memory process lets a role
the tenant grants tenant-wide memory reach any user (``user=None``: every user); every other role
reaches only its own user's memories — the envelope's actor — and naming another user is
refused.

Memory as an API besides: embeddings, and adding or deleting memories directly. Searching is
``memory.recall``; ``memory.list`` pages through what a caller may see, newest first, whatever
stored it (a chat turn or the API). Everything is scoped by the envelope's tenant: an id of
another tenant is simply not found. ``caller_role`` scopes by user as in recall.
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


class MemoryEmbed(Message):
    """Embed texts with ``model`` (the memory service's configured embedder when None).

    With no ``texts`` it embeds nothing and the reply only names the model the service embeds
    with: that is how the gateway lists it in ``GET /v1/models``."""

    texts: list[str]
    model: str | None = None


class MemoryEmbedded(Message):
    model: str
    vectors: list[list[float]]
    prompt_tokens: int = 0


class MemoryAdd(Message):
    """Add one memory; ``id`` makes a repeated add a no-op (``created=False``)."""

    id: str
    text: str
    user: str | None = None
    session: str | None = None
    metadata: dict[str, Any] = {}
    caller_role: str | None = None


class MemoryAdded(Message):
    id: str
    created: bool = True


class MemoryDelete(Message):
    """Delete memories by id, or every memory of ``user`` (and ``session``) when ids is None."""

    ids: list[str] | None = None
    user: str | None = None
    session: str | None = None
    caller_role: str | None = None


class MemoryDeleted(Message):
    deleted: int


class MemoryList(Message):
    """The memories in scope, newest first: ``offset`` skips, ``limit`` caps the page."""

    user: str | None = None
    session: str | None = None
    limit: int = 100
    offset: int = 0
    caller_role: str | None = None


class MemoryListed(Message):
    items: list[MemoryItem]
    # How many memories the scope holds, for paging.
    total: int
