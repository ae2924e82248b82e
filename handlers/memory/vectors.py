"""The Qdrant side of memory: one client per process, the collection, and the tenant scope.

``scope`` is the only place a Qdrant filter is built, and it always starts with the tenant.
Point ids are derived from the tenant too, so even an id-based lookup cannot reach another
tenant's point.
"""

from __future__ import annotations

import json
import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from handlers.memory.embeddings import Embedder
from handlers.memory.errors import InvalidMemory

# Fixed forever: changing it would orphan every stored point id.
ID_NAMESPACE = uuid.UUID("6f1c7c1e-3d0a-5a8e-9b7e-2f6f0c4d9a11")
INDEXED_FIELDS = ("user", "agent", "session", "ref")
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")

MetadataValue = str | int | bool


@dataclass(frozen=True)
class Vectors:
    """What the semantic operations need: an open client, the collection name, the embedder."""

    client: AsyncQdrantClient
    collection: str
    embedder: Embedder


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
) -> models.Filter:
    """The filter of every query: the tenant always, then whatever narrows it further."""
    if not tenant:
        raise InvalidMemory("a tenant is required")
    must: list[models.Condition] = [_equals("tenant", tenant)]
    if refs is not None:
        must.append(models.HasIdCondition(has_id=[point_id(tenant, ref) for ref in refs]))
    for key, value in (("user", user), ("agent", agent), ("session", session)):
        if value is not None:
            must.append(_equals(key, value))
    for key, value in (metadata or {}).items():
        if not _METADATA_KEY.match(key):
            raise InvalidMemory(f"metadata key {key!r} must match {_METADATA_KEY.pattern}")
        if not isinstance(value, str | int | bool):
            raise InvalidMemory(f"metadata filter {key!r} must be a string, integer or boolean")
        must.append(_equals(f"metadata.{key}", value))
    return models.Filter(must=must)


def _equals(key: str, value: MetadataValue) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


# Local mode locks its folder: a second client on the same path in this process would fail,
# so every caller in the process shares one, closed when the last caller lets go.
_local_clients: dict[Path, tuple[AsyncQdrantClient, int]] = {}


def connect(
    qdrant_url: str | None, data_dir: Path, api_key: str | None = None
) -> AsyncQdrantClient:
    """A client for the Qdrant server at ``qdrant_url``, or the process's local on-disk one."""
    if qdrant_url:
        return AsyncQdrantClient(url=qdrant_url, api_key=api_key)
    path = (data_dir / "qdrant").resolve()
    shared = _local_clients.get(path)
    if shared is None:
        path.mkdir(parents=True, exist_ok=True)
        shared = (AsyncQdrantClient(path=str(path)), 0)
    _local_clients[path] = (shared[0], shared[1] + 1)
    return shared[0]


async def disconnect(client: AsyncQdrantClient) -> None:
    for path, (shared, users) in list(_local_clients.items()):
        if shared is client:
            if users > 1:
                _local_clients[path] = (shared, users - 1)
                return
            del _local_clients[path]
            break
    await client.close()


async def ensure_collection(client: AsyncQdrantClient, name: str, embedder: Embedder) -> None:
    """Create the collection and its indexes once; refuse one built by a different embedder."""
    if await client.collection_exists(name):
        await _check_compatible(client, name, embedder)
    else:
        try:
            await client.create_collection(
                name,
                vectors_config=models.VectorParams(
                    size=embedder.dimension, distance=models.Distance.COSINE
                ),
                metadata={"embedder": embedder.name, "dimension": embedder.dimension},
            )
        except UnexpectedResponse as exc:
            if exc.status_code != 409:  # another replica created it first
                raise
            await _check_compatible(client, name, embedder)
    with warnings.catch_warnings():
        # Local mode says payload indexes have no effect there; on a server they matter.
        warnings.simplefilter("ignore", UserWarning)
        await client.create_payload_index(
            name,
            "tenant",
            field_schema=models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=True
            ),
        )
        for field in INDEXED_FIELDS:
            await client.create_payload_index(
                name, field, field_schema=models.PayloadSchemaType.KEYWORD
            )


async def _check_compatible(client: AsyncQdrantClient, name: str, embedder: Embedder) -> None:
    info = await client.get_collection(name)
    params = info.config.params.vectors
    size = params.size if isinstance(params, models.VectorParams) else None
    recorded = (info.config.metadata or {}).get("embedder")
    if size != embedder.dimension or (recorded is not None and recorded != embedder.name):
        raise RuntimeError(
            f"Qdrant collection {name!r} holds vectors of {recorded or 'another embedder'} "
            f"(size {size}); the configured embedder is {embedder.name} "
            f"(size {embedder.dimension}). Set SOMA_MEMORY_COLLECTION to a new collection "
            "or restore the previous SOMA_EMBEDDINGS settings."
        )
