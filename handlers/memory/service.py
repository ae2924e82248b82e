"""The memory process: recall memories for a prompt, store each completed turn once.

Composition root: the embedder, the Qdrant client and the SQL engine are opened at startup
(not in ``build``) so building the service to inspect its routes locks no local Qdrant folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from bus.errors import Rejected
from bus.service import Service
from handlers.memory import store, vectors
from handlers.memory.config import MemoryConfig
from handlers.memory.embeddings import open_embedder
from handlers.memory.errors import InvalidMemory
from handlers.memory.vectors import Vectors
from schemas.envelope import Envelope
from schemas.memories import (
    MemoryAdd,
    MemoryAdded,
    MemoryDelete,
    MemoryDeleted,
    MemoryEmbed,
    MemoryEmbedded,
)
from schemas.memory import MemoryRecall, MemoryRecalled, MemoryStore, MemoryStored
from soma.db import make_engine, migrate
from soma.settings import Settings


@dataclass
class _Opened:
    vectors: Vectors | None = None
    engine: AsyncEngine | None = None

    def require(self) -> tuple[Vectors, AsyncEngine]:
        if self.vectors is None or self.engine is None:
            raise RuntimeError("memory service used before its startup hooks ran")
        return self.vectors, self.engine


def build(settings: Settings, config: MemoryConfig | None = None) -> Service:
    config = config or MemoryConfig()
    opened = _Opened()

    async def start() -> None:
        database_url = settings.resolved_database_url()
        await migrate(database_url)
        embedder = await open_embedder(config)
        client = vectors.connect(settings.qdrant_url, settings.data_dir, config.qdrant_api_key)
        try:
            await vectors.ensure_collection(client, config.collection, embedder)
        except BaseException:
            await vectors.disconnect(client)
            await embedder.close()
            raise
        opened.vectors = Vectors(client, config.collection, embedder)
        opened.engine = make_engine(database_url)

    async def stop() -> None:
        if opened.vectors is not None:
            await vectors.disconnect(opened.vectors.client)
            await opened.vectors.embedder.close()
            opened.vectors = None
        if opened.engine is not None:
            await opened.engine.dispose()
            opened.engine = None

    async def recall(cmd: MemoryRecall, env: Envelope) -> MemoryRecalled:
        memories, _ = opened.require()
        try:
            found = await store.search(
                memories,
                env.tenant,
                cmd.query,
                top_k=cmd.top_k,
                user=cmd.user,
                session=cmd.session,
            )
        except InvalidMemory as exc:
            raise Rejected(f"invalid: {exc}") from exc
        return MemoryRecalled(items=[memory.item() for memory in found])

    async def remember(cmd: MemoryStore, env: Envelope) -> MemoryStored:
        into, engine = opened.require()
        # The command's own timestamp, so a redelivery writes the very same values.
        at = datetime.fromtimestamp(env.timestamp, UTC) if env.timestamp else None
        try:
            created = await store.store_turn(
                into,
                engine,
                env.tenant,
                turn_id=cmd.turn_id,
                text=cmd.text,
                role=cmd.role,
                user=cmd.user,
                session=cmd.session,
                metadata=cmd.metadata,
                at=at,
            )
        except InvalidMemory as exc:
            raise Rejected(f"invalid: {exc}") from exc
        return MemoryStored(turn_id=cmd.turn_id, created=created)

    async def add(cmd: MemoryAdd, env: Envelope) -> MemoryAdded:
        into, _ = opened.require()
        at = datetime.fromtimestamp(env.timestamp, UTC) if env.timestamp else None
        try:
            existed = await store.get(into, env.tenant, cmd.id) is not None
            await store.add(
                into,
                env.tenant,
                cmd.text,
                id=cmd.id,
                user=cmd.user,
                session=cmd.session,
                metadata=cmd.metadata,
                created_at=at,
            )
        except InvalidMemory as exc:
            raise Rejected(f"invalid: {exc}") from exc
        return MemoryAdded(id=cmd.id, created=not existed)

    async def delete(cmd: MemoryDelete, env: Envelope) -> MemoryDeleted:
        into, _ = opened.require()
        try:
            deleted = await store.delete(
                into, env.tenant, cmd.ids, user=cmd.user, session=cmd.session
            )
        except InvalidMemory as exc:
            raise Rejected(f"invalid: {exc}") from exc
        return MemoryDeleted(deleted=deleted)

    async def embed(cmd: MemoryEmbed, env: Envelope) -> MemoryEmbedded:
        into, _ = opened.require()
        if not cmd.texts:
            raise Rejected("invalid: texts must not be empty")
        if cmd.model and cmd.model != into.embedder.name:
            raise Rejected(
                f"not_found: embedding model {cmd.model!r} is not served here; this memory service "
                f"embeds with {into.embedder.name!r}"
            )
        vectors_ = await into.embedder.embed(cmd.texts)
        tokens = sum(len(t.split()) for t in cmd.texts)  # a word count: an approximation
        return MemoryEmbedded(model=into.embedder.name, vectors=vectors_, prompt_tokens=tokens)

    return Service(
        name="memory",
        routes={
            MemoryRecall: recall,
            MemoryStore: remember,
            MemoryAdd: add,
            MemoryDelete: delete,
            MemoryEmbed: embed,
        },
        startup=[start],
        shutdown=[stop],
    )
