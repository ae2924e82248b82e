"""The memory process: recall memories for a prompt, store each completed turn once.

Composition root: the embedder and the vector index are opened at startup (not in ``build``) so
building the service to inspect its routes locks no memory store folder; the SQL engine is made
in ``build`` and connects on first use, after the startup's migration.

Every command is scoped by user here (``scope.whose``) from its ``caller_role`` and the envelope's
actor; a command naming a user its caller may not reach is refused as ``forbidden``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from bus.errors import Conflict, Forbidden, Invalid, NotFound
from bus.service import Clock, Connected, Service
from handlers.memory import store, turns, vectors
from handlers.memory.config import MemoryConfig
from handlers.memory.embeddings import open_embedder
from handlers.memory.errors import InvalidMemory
from handlers.memory.scope import OtherUser, grants_of, whose
from handlers.memory.vectors import Vectors
from kernel.constitution import load_trust, trust_file
from kernel.db import dispose, make_engine, migrate
from kernel.grants import GrantStore, InvalidTenant, policy_dir
from kernel.settings import Settings
from schemas.envelope import Envelope
from schemas.memory import (
    MemoryAdd,
    MemoryAdded,
    MemoryDelete,
    MemoryDeleted,
    MemoryEmbed,
    MemoryEmbedded,
    MemoryList,
    MemoryListed,
    MemoryRecall,
    MemoryRecalled,
    MemoryStore,
    MemoryStored,
)


@dataclass
class _Opened:
    """The index and embedder, which open (and may download or probe) at startup."""

    vectors: Vectors | None = None
    clock: Clock = time.time  # the runtime's, once the startup hook has it

    def require(self) -> Vectors:
        if self.vectors is None:
            raise RuntimeError("memory service used before its startup hooks ran")
        return self.vectors


def build(settings: Settings, config: MemoryConfig | None = None) -> Service:
    config = config or MemoryConfig()
    opened = _Opened()
    grants = GrantStore(policy_dir(settings), trust=load_trust(trust_file(settings)))
    database_url = settings.resolved_database_url("memory")
    engine = make_engine(database_url)  # connects on first use, after the migration

    def scoped(env: Envelope, role: str | None, user: str | None) -> str | None:
        try:
            return whose(grants_of(grants, env.tenant), env.actor, role, user)
        except InvalidTenant as exc:
            raise Invalid(f"{exc}") from exc
        except OtherUser as exc:
            raise Forbidden(f"{exc}") from exc

    async def start(bus: Connected) -> None:
        opened.clock = bus.clock
        await migrate(database_url, "memory")
        embedder = await open_embedder(config)
        try:
            index = await vectors.open_index(
                settings.qdrant_url,
                settings.data_dir,
                config.collection,
                embedder,
                config.qdrant_api_key,
            )
        except BaseException:
            await embedder.close()
            raise
        opened.vectors = Vectors(index, embedder)

    async def stop() -> None:
        if opened.vectors is not None:
            await opened.vectors.index.close()
            await opened.vectors.embedder.close()
            opened.vectors = None
        await dispose(engine)

    async def recall(cmd: MemoryRecall, env: Envelope) -> MemoryRecalled:
        memories = opened.require()
        user = scoped(env, cmd.caller_role, cmd.user)
        try:
            found = await store.search(
                memories,
                env.tenant,
                cmd.query,
                top_k=cmd.top_k,
                user=user,
                session=cmd.session,
            )
        except InvalidMemory as exc:
            raise Invalid(f"{exc}") from exc
        return MemoryRecalled(items=[memory.item() for memory in found])

    async def remember(cmd: MemoryStore, env: Envelope) -> MemoryStored:
        into = opened.require()
        user = scoped(env, cmd.caller_role, cmd.user)
        # The command's own timestamp, so a redelivery writes the very same values.
        at = datetime.fromtimestamp(env.timestamp or opened.clock(), UTC)
        try:
            created = await store.store_turn(
                into,
                engine,
                env.tenant,
                turn_id=cmd.turn_id,
                text=cmd.text,
                role=cmd.role,
                user=user,
                session=cmd.session,
                metadata=cmd.metadata,
                at=at,
            )
        except InvalidMemory as exc:
            raise Invalid(f"{exc}") from exc
        return MemoryStored(turn_id=cmd.turn_id, created=created)

    async def add(cmd: MemoryAdd, env: Envelope) -> MemoryAdded:
        into = opened.require()
        user = scoped(env, cmd.caller_role, cmd.user)
        at = datetime.fromtimestamp(env.timestamp or opened.clock(), UTC)
        try:
            existing = await store.get(into, env.tenant, cmd.id)
            if existing is not None and existing.user != user:
                # The id is another user's: overwriting it would hand it over.
                raise Conflict(f"memory id {cmd.id!r} is taken")
            existed = existing is not None
            await store.add(
                into,
                env.tenant,
                cmd.text,
                id=cmd.id,
                user=user,
                session=cmd.session,
                metadata=cmd.metadata,
                created_at=at,
            )
        except InvalidMemory as exc:
            raise Invalid(f"{exc}") from exc
        return MemoryAdded(id=cmd.id, created=not existed)

    async def delete(cmd: MemoryDelete, env: Envelope) -> MemoryDeleted:
        into = opened.require()
        user = scoped(env, cmd.caller_role, cmd.user)
        try:
            deleted = await store.delete(into, env.tenant, cmd.ids, user=user, session=cmd.session)
        except InvalidMemory as exc:
            raise Invalid(f"{exc}") from exc
        if cmd.ids:
            # A stored chat turn is a memory and a history row: deleting it forgets both.
            await turns.forget(engine, env.tenant, cmd.ids, user=user)
        return MemoryDeleted(deleted=deleted)

    async def list_memories(cmd: MemoryList, env: Envelope) -> MemoryListed:
        memories = opened.require()
        user = scoped(env, cmd.caller_role, cmd.user)
        try:
            page, total = await store.listing(
                memories,
                env.tenant,
                user=user,
                session=cmd.session,
                limit=cmd.limit,
                offset=cmd.offset,
            )
        except InvalidMemory as exc:
            raise Invalid(f"{exc}") from exc
        return MemoryListed(items=[memory.item() for memory in page], total=total)

    async def embed(cmd: MemoryEmbed, env: Envelope) -> MemoryEmbedded:
        into = opened.require()
        if not cmd.texts:
            # No texts asks only which model embeds here (the gateway lists it in /v1/models).
            return MemoryEmbedded(model=into.embedder.name, vectors=[])
        if cmd.model and cmd.model != into.embedder.name:
            raise NotFound(
                f"embedding model {cmd.model!r} is not served here; this memory service "
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
            MemoryList: list_memories,
            MemoryEmbed: embed,
        },
        startup=[start],
        shutdown=[stop],
    )
