"""Memory's vectors: the engine chosen from settings, the tenant scope, and point ids.

``scope`` is the only place a filter is built, and it always starts with the tenant. Point ids
are derived from the tenant too, so even an id-based lookup cannot reach another tenant's point.
``open_index`` is the only place an engine is chosen: the Qdrant server at ``QDRANT_URL``, or,
without one, the in-process edge shard under ``SOMA_DATA_DIR``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.memory.edge_index import EdgeIndex
from handlers.memory.embeddings import Embedder
from handlers.memory.errors import InvalidMemory
from handlers.memory.index import Condition, Equals, HasIds, Scope, VectorIndex
from handlers.memory.server_index import ServerIndex

# Fixed forever: changing it would orphan every stored point id.
ID_NAMESPACE = uuid.UUID("6f1c7c1e-3d0a-5a8e-9b7e-2f6f0c4d9a11")
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


@dataclass(frozen=True)
class Vectors:
    """What the semantic operations need: an open index and the embedder that fills it."""

    index: VectorIndex
    embedder: Embedder


async def open_index(
    qdrant_url: str | None,
    data_dir: Path,
    collection: str,
    embedder: Embedder,
    api_key: str | None = None,
) -> VectorIndex:
    """The collection on the Qdrant server at ``qdrant_url``, or the process's edge shard."""
    if qdrant_url:
        return await ServerIndex.open(qdrant_url, collection, embedder, api_key)
    return await EdgeIndex.open(data_dir, collection, embedder)


def point_id(tenant: str, ref: str) -> str:
    """A deterministic point id: re-adding the same ``ref`` for the same tenant overwrites."""
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps([tenant, ref])))


def scope(
    tenant: str,
    *,
    refs: list[str] | None = None,
    user: str | None = None,
    agent: str | None = None,
    session: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Scope:
    """The filter of every query: the tenant always, then whatever narrows it further."""
    if not tenant:
        raise InvalidMemory("a tenant is required")
    must: list[Condition] = [Equals("tenant", tenant)]
    if refs is not None:
        must.append(HasIds(tuple(point_id(tenant, ref) for ref in refs)))
    for key, value in (("user", user), ("agent", agent), ("session", session)):
        if value is not None:
            must.append(Equals(key, value))
    for key, value in (metadata or {}).items():
        if not _METADATA_KEY.match(key):
            raise InvalidMemory(f"metadata key {key!r} must match {_METADATA_KEY.pattern}")
        # Booleans are refused: the edge binding turns a boolean match into the integer 0 or 1,
        # so it would find ``1`` and miss ``true``; a filter must mean the same on every engine.
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidMemory(f"metadata filter {key!r} must be a string or an integer")
        must.append(Equals(f"metadata.{key}", value))
    return Scope(tuple(must))
