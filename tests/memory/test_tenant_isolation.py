"""No operation of one tenant can see, return or remove another tenant's memories."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qdrant_edge import ScrollRequest

from handlers.memory import store, vectors
from handlers.memory.edge_index import EdgeIndex

WORDS = ["alpha", "beta", "gamma", "delta", "invoice", "deploy", "garden", "paris", "cats", "tea"]
USERS = ["ann", "bob", "cy"]
REFS = ["m0", "m1", "m2"]

texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)
memories = st.lists(
    st.tuples(st.booleans(), st.sampled_from(USERS), texts), min_size=1, max_size=10
)

ISOLATION = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

Stored = dict[str, dict[str, str]]


async def _load(local: vectors.Vectors, rows: list[tuple[bool, str, str]]) -> Stored:
    """Add the rows to two fresh tenants, with ids repeating across tenants (m0, m1, m2)."""
    tenants = (f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}")
    stored: Stored = {tenant: {} for tenant in tenants}
    for index, (in_a, user, text) in enumerate(rows):
        tenant = tenants[0] if in_a else tenants[1]
        ref = REFS[index % len(REFS)]
        await store.add(local, tenant, text, id=ref, user=user)
        stored[tenant][ref] = text
    return stored


async def _everything(local: vectors.Vectors) -> list[dict]:
    """All points the store holds, read from the engine itself without any filter."""
    assert isinstance(local.index, EdgeIndex)
    records, _ = local.index.shard.scroll(ScrollRequest(limit=100_000, with_payload=True))
    return [record.payload or {} for record in records]


@ISOLATION
@given(rows=memories, query=texts)
async def test_search_returns_exactly_the_callers_memories(local_vectors, rows, query) -> None:
    stored = await _load(local_vectors, rows)
    for tenant, own in stored.items():
        found = await store.search(local_vectors, tenant, query, top_k=store.MAX_TOP_K)
        assert sorted((m.id, m.text) for m in found) == sorted(own.items())
        assert {m.tenant for m in found} <= {tenant}


@ISOLATION
@given(rows=memories)
async def test_get_by_an_id_both_tenants_use_returns_the_callers_own(local_vectors, rows) -> None:
    stored = await _load(local_vectors, rows)
    for tenant, own in stored.items():
        for ref in REFS:
            memory = await store.get(local_vectors, tenant, ref)
            assert (memory.text if memory else None) == own.get(ref)


@ISOLATION
@given(rows=memories, user=st.sampled_from(USERS))
async def test_deleting_in_one_tenant_leaves_the_other_untouched(local_vectors, rows, user) -> None:
    stored = await _load(local_vectors, rows)
    tenant_a, tenant_b = stored
    await store.delete(local_vectors, tenant_a, user=user)
    await store.delete(local_vectors, tenant_a, REFS)
    remaining = await _everything(local_vectors)
    assert not [p for p in remaining if p["tenant"] == tenant_a]
    assert {p["ref"]: p["text"] for p in remaining if p["tenant"] == tenant_b} == stored[tenant_b]
