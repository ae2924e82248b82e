"""Memory as an API: embeddings, and adding or deleting memories directly.

Searching is ``memory.recall`` (schemas/memory.py); ``memory.list`` pages through what a caller
may see, newest first, whatever stored it (a chat turn or the API). Everything is scoped by the
envelope's tenant: an id of another tenant is simply not found. ``caller_role`` scopes by user as
in recall.
"""

from typing import Any

from schemas.base import Message
from schemas.memory import MemoryItem


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
