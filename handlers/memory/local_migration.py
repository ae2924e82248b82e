"""Moving memories stored by earlier versions into the edge shard, once, when it is created.

Before the edge shard, the embedded default was qdrant-client's local mode: a folder
``SOMA_DATA_DIR/qdrant`` that holds every collection. The first open of a collection's shard
copies that collection's points (ids, vectors, payloads unchanged) into it; the old folder is left
as it was, for the operator to delete once satisfied.
"""

from __future__ import annotations

from pathlib import Path

import qdrant_edge as edge
from qdrant_client import QdrantClient, models

from handlers.memory.embeddings import Embedder

BATCH = 1000


def migrate(old_root: Path, collection: str, embedder: Embedder, shard: edge.EdgeShard) -> int:
    """Copy ``collection`` from the local-mode folder ``old_root`` into ``shard``; how many."""
    if not (old_root / "collection" / collection).is_dir():
        return 0
    client = QdrantClient(path=str(old_root))
    try:
        if not client.collection_exists(collection):
            return 0
        _check_compatible(client, old_root, collection, embedder)
        moved = 0
        offset: models.ExtendedPointId | None = None
        while True:
            points, offset = client.scroll(
                collection, limit=BATCH, offset=offset, with_payload=True, with_vectors=True
            )
            batch = [
                edge.Point(str(point.id), point.vector, point.payload or {})
                for point in points
                if isinstance(point.vector, list)
            ]
            if batch:
                shard.update(edge.UpdateOperation.upsert_points(batch))
            moved += len(batch)
            if offset is None:
                return moved
    finally:
        client.close()


def _check_compatible(
    client: QdrantClient, old_root: Path, collection: str, embedder: Embedder
) -> None:
    info = client.get_collection(collection)
    params = info.config.params.vectors
    size = params.size if isinstance(params, models.VectorParams) else None
    recorded = (info.config.metadata or {}).get("embedder")
    if size != embedder.dimension or (recorded is not None and recorded != embedder.name):
        raise RuntimeError(
            f"the former memory store {old_root} ({collection!r}) holds vectors of "
            f"{recorded or 'another embedder'} (size {size}); the configured embedder is "
            f"{embedder.name} (size {embedder.dimension}), so they cannot be moved. Set "
            "SOMA_MEMORY_COLLECTION to a new collection or restore the previous "
            "SOMA_EMBEDDINGS settings."
        )
