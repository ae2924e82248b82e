"""Semantic memory on the embedded store (the edge shard) with the hashed embedder."""

from __future__ import annotations

import uuid

import pytest

from handlers.memory import store, vectors
from handlers.memory.errors import InvalidMemory
from handlers.memory.index import Equals, HasIds


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def count(local: vectors.Vectors, tenant: str) -> int:
    return await local.index.count(vectors.scope(tenant))


async def test_the_most_similar_text_ranks_first(local_vectors) -> None:
    tenant = new_tenant()
    await store.add(local_vectors, tenant, "The deploy pipeline failed on the staging cluster")
    await store.add(local_vectors, tenant, "Alice prefers vegetarian restaurants near the office")
    await store.add(local_vectors, tenant, "Quarterly revenue grew by twelve percent")
    found = await store.search(local_vectors, tenant, "which restaurants does Alice prefer?")
    assert found[0].text == "Alice prefers vegetarian restaurants near the office"


async def test_search_returns_scores_best_first_and_at_most_top_k(local_vectors) -> None:
    tenant = new_tenant()
    for text in ["red apples", "green apples", "ripe red apples", "blue sky", "apple pie"]:
        await store.add(local_vectors, tenant, text)
    found = await store.search(local_vectors, tenant, "red apples", top_k=3)
    assert len(found) == 3
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    assert found[0].text == "red apples"
    assert found[0].score == pytest.approx(1.0)


async def test_adding_again_with_the_same_id_overwrites_instead_of_duplicating(
    local_vectors,
) -> None:
    tenant = new_tenant()
    await store.add(local_vectors, tenant, "first wording", id="fact-1")
    await store.add(local_vectors, tenant, "second wording", id="fact-1")
    assert await count(local_vectors, tenant) == 1
    memory = await store.get(local_vectors, tenant, "fact-1")
    assert memory is not None and memory.text == "second wording"


async def test_get_returns_what_was_added(local_vectors) -> None:
    tenant = new_tenant()
    added = await store.add(
        local_vectors,
        tenant,
        "likes dark mode",
        user="u1",
        agent="a1",
        session="s1",
        metadata={"source": "settings", "weight": 3},
    )
    memory = await store.get(local_vectors, tenant, added.id)
    assert memory is not None
    assert (memory.text, memory.user, memory.agent, memory.session) == (
        "likes dark mode",
        "u1",
        "a1",
        "s1",
    )
    assert memory.metadata == {"source": "settings", "weight": 3}
    assert memory.created_at == added.created_at


async def test_get_of_an_unknown_id_is_none(local_vectors) -> None:
    assert await store.get(local_vectors, new_tenant(), "never-added") is None


@pytest.mark.parametrize(
    ("narrowing", "expected"),
    [
        ({"user": "ann"}, {"ann notes on apples", "ann and apples again"}),
        ({"session": "s2"}, {"ann and apples again", "bob on apples"}),
        ({"agent": "planner"}, {"bob on apples"}),
        ({"metadata": {"topic": "fruit"}}, {"ann notes on apples"}),
        ({"user": "ann", "session": "s2"}, {"ann and apples again"}),
    ],
)
async def test_search_narrows_by_user_session_agent_and_metadata(
    local_vectors, narrowing, expected
) -> None:
    tenant = new_tenant()
    await store.add(
        local_vectors, tenant, "ann notes on apples", user="ann", session="s1",
        metadata={"topic": "fruit"},
    )  # fmt: skip
    await store.add(local_vectors, tenant, "ann and apples again", user="ann", session="s2")
    await store.add(
        local_vectors, tenant, "bob on apples", user="bob", session="s2", agent="planner"
    )
    found = await store.search(local_vectors, tenant, "apples", top_k=10, **narrowing)
    assert {m.text for m in found} == expected


async def test_delete_by_id_removes_only_that_memory(local_vectors) -> None:
    tenant = new_tenant()
    await store.add(local_vectors, tenant, "keep me", id="keep")
    await store.add(local_vectors, tenant, "drop me", id="drop")
    assert await store.delete(local_vectors, tenant, ["drop"]) == 1
    assert await store.get(local_vectors, tenant, "drop") is None
    assert await store.get(local_vectors, tenant, "keep") is not None


async def test_delete_by_session_removes_all_of_that_session(local_vectors) -> None:
    tenant = new_tenant()
    await store.add(local_vectors, tenant, "one", session="gone")
    await store.add(local_vectors, tenant, "two", session="gone")
    await store.add(local_vectors, tenant, "three", session="stays")
    assert await store.delete(local_vectors, tenant, session="gone") == 2
    assert await count(local_vectors, tenant) == 1


async def test_delete_without_a_selector_is_refused(local_vectors) -> None:
    with pytest.raises(InvalidMemory):
        await store.delete(local_vectors, new_tenant())


async def test_blank_text_is_refused(local_vectors) -> None:
    with pytest.raises(InvalidMemory):
        await store.add(local_vectors, new_tenant(), "   ")


async def test_text_the_embedder_cannot_represent_is_refused(local_vectors) -> None:
    with pytest.raises(InvalidMemory):
        await store.add(local_vectors, new_tenant(), "?!")


async def test_a_blank_query_recalls_nothing(local_vectors) -> None:
    tenant = new_tenant()
    await store.add(local_vectors, tenant, "something")
    assert await store.search(local_vectors, tenant, "  ") == []


@pytest.mark.parametrize("top_k", [0, store.MAX_TOP_K + 1])
async def test_top_k_outside_its_bounds_is_refused(local_vectors, top_k) -> None:
    with pytest.raises(InvalidMemory):
        await store.search(local_vectors, new_tenant(), "query", top_k=top_k)


async def test_a_nested_metadata_filter_value_is_refused(local_vectors) -> None:
    with pytest.raises(InvalidMemory):
        await store.search(local_vectors, new_tenant(), "q", metadata={"k": {"nested": 1}})


async def test_a_boolean_metadata_filter_is_refused(local_vectors) -> None:
    with pytest.raises(InvalidMemory, match="string or an integer"):
        await store.search(local_vectors, new_tenant(), "q", metadata={"pinned": True})


def test_every_filter_starts_with_the_tenant() -> None:
    where = vectors.scope("acme", refs=["r"], user="u", session="s", metadata={"k": "v"})
    assert where.must[0] == Equals("tenant", "acme")
    assert HasIds((vectors.point_id("acme", "r"),)) in where.must
    assert Equals("metadata.k", "v") in where.must


def test_a_filter_without_a_tenant_cannot_be_built() -> None:
    with pytest.raises(InvalidMemory):
        vectors.scope("")


def test_the_same_id_in_two_tenants_is_two_points() -> None:
    assert vectors.point_id("a", "fact-1") != vectors.point_id("b", "fact-1")
    assert vectors.point_id("a", "fact-1") == vectors.point_id("a", "fact-1")
