"""Memory's vectors on a Qdrant server (``QDRANT_URL``), through ``AsyncQdrantClient``.

Several memory processes may share one server collection, so creating it tolerates a replica
that created it first; every payload index is (re)declared at open, which the server makes
idempotent.
"""

from __future__ import annotations

from typing import Any

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from handlers.memory.embeddings import Embedder
from handlers.memory.index import Equals, Hit, Scope

INDEXED_FIELDS = ("user", "agent", "session", "ref")


class ServerIndex:
    def __init__(self, client: AsyncQdrantClient, collection: str) -> None:
        self.client = client
        self.collection = collection

    @classmethod
    async def open(
        cls, url: str, collection: str, embedder: Embedder, api_key: str | None = None
    ) -> ServerIndex:
        return await cls.on(AsyncQdrantClient(url=url, api_key=api_key), collection, embedder)

    @classmethod
    async def on(
        cls, client: AsyncQdrantClient, collection: str, embedder: Embedder
    ) -> ServerIndex:
        """The collection behind ``client``, created on first use; closes ``client`` on failure."""
        try:
            await _ensure_collection(client, collection, embedder)
        except BaseException:
            await client.close()
            raise
        return cls(client, collection)

    async def upsert(self, id: str, vector: list[float], payload: dict[str, Any]) -> None:
        await self.client.upsert(
            self.collection,
            points=[models.PointStruct(id=id, vector=vector, payload=payload)],
            wait=True,
        )

    async def query(
        self, vector: list[float], where: Scope, limit: int, min_score: float | None = None
    ) -> list[Hit]:
        response = await self.client.query_points(
            self.collection,
            query=vector,
            query_filter=qdrant_filter(where),
            limit=limit,
            with_payload=True,
            score_threshold=min_score,
        )
        return [Hit(point.payload or {}, point.score) for point in response.points]

    async def payloads(self, where: Scope, limit: int) -> list[dict[str, Any]]:
        points, _ = await self.client.scroll(
            self.collection, scroll_filter=qdrant_filter(where), limit=limit, with_payload=True
        )
        return [point.payload or {} for point in points]

    async def count(self, where: Scope) -> int:
        found = await self.client.count(
            self.collection, count_filter=qdrant_filter(where), exact=True
        )
        return found.count

    async def delete(self, where: Scope) -> None:
        await self.client.delete(
            self.collection,
            points_selector=models.FilterSelector(filter=qdrant_filter(where)),
            wait=True,
        )

    async def close(self) -> None:
        await self.client.close()


def qdrant_filter(where: Scope) -> models.Filter:
    """``where`` in qdrant-client's types, condition for condition, in the same order."""
    must: list[models.Condition] = [
        models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value))
        if isinstance(c, Equals)
        else models.HasIdCondition(has_id=list(c.ids))
        for c in where.must
    ]
    return models.Filter(must=must)


async def _ensure_collection(client: AsyncQdrantClient, name: str, embedder: Embedder) -> None:
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
