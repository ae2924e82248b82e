"""The memory service as the bus runtime drives it: startup hooks, then its routes — each command
scoped to its caller's own user unless the tenant grants the caller's role tenant-wide memory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bus.errors import Forbidden, Invalid, Rejected
from bus.service import Connected, Service
from handlers.memory import vectors
from handlers.memory.config import MemoryConfig
from handlers.memory.embeddings import HashedNgrams
from handlers.memory.service import build
from handlers.memory.turns import memory_turns
from kernel.db import make_engine
from kernel.settings import Settings
from schemas.envelope import Envelope, new_id
from schemas.memory import (
    MemoryAdd,
    MemoryDelete,
    MemoryEmbed,
    MemoryList,
    MemoryListed,
    MemoryRecall,
    MemoryRecalled,
    MemoryStore,
    MemoryStored,
)

SHARING = "sharing"
SHARING_POLICY = """
version: 1
memory:
  tenant_wide_roles: [member]
"""


@dataclass
class Running:
    service: Service
    settings: Settings

    async def store(self, tenant: str, cmd: MemoryStore, actor: str = "system") -> MemoryStored:
        reply: MemoryStored = await self.service.routes[MemoryStore](cmd, envelope(tenant, actor))
        return reply

    async def recall(self, tenant: str, cmd: MemoryRecall, actor: str = "system") -> MemoryRecalled:
        route = self.service.routes[MemoryRecall]
        reply: MemoryRecalled = await route(cmd, envelope(tenant, actor))
        return reply

    async def list(self, tenant: str, cmd: MemoryList, actor: str = "system") -> MemoryListed:
        reply: MemoryListed = await self.service.routes[MemoryList](cmd, envelope(tenant, actor))
        return reply

    async def delete(self, tenant: str, cmd: MemoryDelete, actor: str = "system") -> int:
        reply = await self.service.routes[MemoryDelete](cmd, envelope(tenant, actor))
        return int(reply.deleted)


def envelope(tenant: str, actor: str = "system") -> Envelope:
    return Envelope(
        message_id=new_id(), correlation_id=new_id(), tenant=tenant, schema="memory", actor=actor
    )


@pytest.fixture(scope="module")
async def running(
    tmp_path_factory: pytest.TempPathFactory, connected: Connected
) -> AsyncIterator[Running]:
    data_dir: Path = tmp_path_factory.mktemp("memory-service")
    (data_dir / "policy").mkdir()
    (data_dir / "policy" / f"{SHARING}.yaml").write_text(SHARING_POLICY)
    # Given explicitly, so the machine's environment cannot change what is tested.
    settings = Settings.model_validate(
        {"SOMA_DATA_DIR": data_dir, "DATABASE_URL": None, "QDRANT_URL": None}
    )
    config = MemoryConfig.model_validate(
        {
            "SOMA_EMBEDDINGS": "hashed-ngrams",
            "SOMA_EMBEDDINGS_DIMENSION": None,
            "SOMA_MEMORY_COLLECTION": "soma_memory",
        }
    )
    with pytest.MonkeyPatch.context() as env:
        env.delenv("SOMA_POLICY_DIR", raising=False)
        service = build(settings, config)
    for hook in service.startup:
        await hook(connected)
    yield Running(service, settings)
    for hook in service.shutdown:
        await hook()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def points_of(running: Running, tenant: str) -> int:
    # Shares the service's open shard: one process owns the folder.
    index = await vectors.open_index(None, running.settings.data_dir, "soma_memory", HashedNgrams())
    try:
        return await index.count(vectors.scope(tenant))
    finally:
        await index.close()


async def turn_rows_of(running: Running, tenant: str) -> int:
    engine = make_engine(running.settings.resolved_database_url("memory"))
    try:
        async with engine.connect() as conn:
            query = select(func.count()).where(memory_turns.c.tenant == tenant)
            return int((await conn.execute(query)).scalar_one())
    finally:
        await engine.dispose()


def test_the_service_routes_recall_store_add_delete_and_embed(running) -> None:
    assert running.service.name == "memory"
    assert set(running.service.routes) == {
        MemoryRecall,
        MemoryStore,
        MemoryAdd,
        MemoryDelete,
        MemoryList,
        MemoryEmbed,
    }


async def test_storing_the_same_turn_twice_creates_one_point_and_one_history_row(running) -> None:
    owner = tenant()
    cmd = MemoryStore(turn_id="turn-1", text="We chose PostgreSQL for sagas", session="s1")
    first = await running.store(owner, cmd)
    second = await running.store(owner, cmd)
    assert (first.created, second.created) == (True, False)
    assert first.turn_id == second.turn_id == "turn-1"
    assert await points_of(running, owner) == 1
    assert await turn_rows_of(running, owner) == 1


async def test_a_stored_turn_is_recalled_for_its_tenant(running) -> None:
    owner = tenant()
    await running.store(
        owner, MemoryStore(turn_id="a", text="The invoice is due on Friday", user="ann"), "ann"
    )
    await running.store(owner, MemoryStore(turn_id="b", text="Lunch was pasta", user="ann"), "ann")
    recalled = await running.recall(
        owner, MemoryRecall(query="when is the invoice due", top_k=1), "ann"
    )
    assert [item.id for item in recalled.items] == ["a"]
    assert recalled.items[0].text == "The invoice is due on Friday"
    assert recalled.items[0].user == "ann"
    assert recalled.items[0].score > 0


async def test_recall_never_returns_another_tenants_turn(running) -> None:
    owner, stranger = tenant(), tenant()
    await running.store(owner, MemoryStore(turn_id="x", text="secret launch date is May"))
    recalled = await running.recall(stranger, MemoryRecall(query="secret launch date"))
    assert recalled.items == []


async def _ann_and_bob_like_tea(running: Running, owner: str) -> None:
    await running.store(owner, MemoryStore(turn_id="1", text="ann likes tea", user="ann"), "ann")
    await running.store(owner, MemoryStore(turn_id="2", text="bob likes tea", user="bob"), "bob")


async def test_a_listing_pages_through_memories_newest_first(running) -> None:
    owner = tenant()
    add = running.service.routes[MemoryAdd]
    for n in range(1, 6):
        at = Envelope(
            message_id=new_id(), correlation_id=new_id(), tenant=owner, schema="memory",
            actor="ann", timestamp=1_700_000_000.0 + n,
        )  # fmt: skip
        await add(MemoryAdd(id=f"m{n}", text=f"note {n}", caller_role="member"), at)
    first = await running.list(owner, MemoryList(limit=2, caller_role="member"), "ann")
    assert [i.text for i in first.items] == ["note 5", "note 4"]
    assert first.total == 5
    last = await running.list(owner, MemoryList(limit=2, offset=4, caller_role="member"), "ann")
    assert [i.text for i in last.items] == ["note 1"]
    assert last.items[0].created_at == 1_700_000_001.0


async def test_a_members_listing_shows_only_its_own_memories(running) -> None:
    owner = tenant()
    await _ann_and_bob_like_tea(running, owner)
    listed = await running.list(owner, MemoryList(caller_role="member"), "ann")
    assert ([i.text for i in listed.items], listed.total) == (["ann likes tea"], 1)


async def test_a_member_listing_another_users_memories_is_refused(running) -> None:
    with pytest.raises(Forbidden, match=r"^memory\.other_user"):
        await running.list(tenant(), MemoryList(user="bob", caller_role="member"), "ann")


async def test_a_listing_page_of_no_memories_is_rejected(running) -> None:
    with pytest.raises(Invalid, match=r"^limit"):
        await running.list(tenant(), MemoryList(limit=0, caller_role="member"), "ann")


async def test_recall_is_narrowed_to_the_asked_user(running) -> None:
    owner = tenant()
    await _ann_and_bob_like_tea(running, owner)
    asked = MemoryRecall(query="likes tea", user="bob", caller_role="admin")
    recalled = await running.recall(owner, asked, "root")
    assert [item.text for item in recalled.items] == ["bob likes tea"]


async def test_a_members_recall_without_a_user_reaches_only_its_own_memories(running) -> None:
    owner = tenant()
    await _ann_and_bob_like_tea(running, owner)
    asked = MemoryRecall(query="likes tea", caller_role="member")
    recalled = await running.recall(owner, asked, "ann")
    assert [item.text for item in recalled.items] == ["ann likes tea"]


async def test_a_member_naming_another_user_is_refused_as_forbidden(running) -> None:
    owner = tenant()
    await _ann_and_bob_like_tea(running, owner)
    asked = MemoryRecall(query="likes tea", user="bob", caller_role="member")
    with pytest.raises(Forbidden, match=r"^memory\.other_user"):
        await running.recall(owner, asked, "ann")


async def test_a_member_cannot_store_under_another_users_name(running) -> None:
    with pytest.raises(Forbidden):
        await running.store(
            tenant(),
            MemoryStore(turn_id="t", text="planted", user="bob", caller_role="member"),
            "ann",
        )


async def test_a_tenant_wide_role_recalls_every_users_memories(running) -> None:
    owner = tenant()
    await _ann_and_bob_like_tea(running, owner)
    asked = MemoryRecall(query="likes tea", caller_role="admin")
    recalled = await running.recall(owner, asked, "root")
    assert sorted(item.text for item in recalled.items) == ["ann likes tea", "bob likes tea"]


async def test_a_tenant_policy_can_grant_a_role_tenant_wide_memory(running) -> None:
    await _ann_and_bob_like_tea(running, SHARING)
    asked = MemoryRecall(query="likes tea", user="bob", caller_role="member")
    recalled = await running.recall(SHARING, asked, "ann")
    assert [item.text for item in recalled.items] == ["bob likes tea"]


async def test_a_member_deleting_another_users_memory_by_id_deletes_nothing(running) -> None:
    owner = tenant()
    await _ann_and_bob_like_tea(running, owner)
    mine_only = MemoryDelete(ids=["2"], caller_role="member")
    assert await running.delete(owner, mine_only, "ann") == 0
    asked = MemoryRecall(query="likes tea", caller_role="member")
    assert len((await running.recall(owner, asked, "bob")).items) == 1


async def test_deleting_a_stored_turn_by_id_forgets_its_history_row_too(running) -> None:
    owner = tenant()
    await _ann_and_bob_like_tea(running, owner)
    assert await running.delete(owner, MemoryDelete(ids=["1"], caller_role="member"), "ann") == 1
    assert await points_of(running, owner) == 1
    assert await turn_rows_of(running, owner) == 1


async def test_a_blank_turn_is_rejected(running) -> None:
    with pytest.raises(Rejected):
        await running.store(tenant(), MemoryStore(turn_id="blank", text="  "))


async def test_a_recall_asking_for_no_results_is_rejected(running) -> None:
    with pytest.raises(Rejected):
        await running.recall(tenant(), MemoryRecall(query="anything", top_k=0))


async def test_an_embed_of_no_texts_names_the_embedding_model_and_embeds_nothing(
    running,
) -> None:
    embed = running.service.routes[MemoryEmbed]
    at = Envelope(
        message_id=new_id(), correlation_id=new_id(), tenant=tenant(), schema="memory",
        actor="gateway", timestamp=1_700_000_000.0,
    )  # fmt: skip
    answer = await embed(MemoryEmbed(texts=[]), at)
    assert (answer.model, answer.vectors) == (HashedNgrams().name, [])
