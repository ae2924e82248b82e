"""The vector index contract, held by every engine behind memory: the same operations give the
same results on the edge shard (the embedded default) and through the server client.

No Qdrant server runs here, so the server client is driven against qdrant-client's local mode,
which serves the same API in process.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from handlers.memory.edge_index import EdgeIndex
from handlers.memory.embeddings import HashedNgrams
from handlers.memory.index import VectorIndex
from handlers.memory.server_index import ServerIndex
from handlers.memory.vectors import point_id, scope

EMBEDDER = HashedNgrams(8)  # only its name and size matter: these tests give their own vectors
NORTH, EAST, NORTH_EAST = ([1.0, 0.0] + [0.0] * 6, [0.0, 1.0] + [0.0] * 6, [1.0, 1.0] + [0.0] * 6)


@pytest.fixture(params=["edge", "server-client"])
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorIndex]:
    opened: VectorIndex
    if request.param == "edge":
        opened = await EdgeIndex.open(tmp_path, "contract", EMBEDDER)
    else:
        with warnings.catch_warnings():
            # Local mode warns that payload indexes do nothing there; a server builds them.
            warnings.simplefilter("ignore", UserWarning)
            client = AsyncQdrantClient(location=":memory:")
            opened = await ServerIndex.on(client, "contract", EMBEDDER)
    yield opened
    await opened.close()


async def put(
    index: VectorIndex, tenant: str, ref: str, vector: list[float], **fields: object
) -> None:
    await index.upsert(point_id(tenant, ref), vector, {"tenant": tenant, "ref": ref, **fields})


def refs(payloads: list[dict]) -> set[str]:
    return {payload["ref"] for payload in payloads}


async def test_a_query_sees_only_the_tenant_of_its_scope(index: VectorIndex) -> None:
    await put(index, "acme", "a", NORTH)
    await put(index, "globex", "g", NORTH)
    hits = await index.query(NORTH, scope("acme"), limit=10)
    assert [hit.payload["ref"] for hit in hits] == ["a"]


async def test_a_user_scope_sees_only_that_users_points(index: VectorIndex) -> None:
    await put(index, "acme", "ann-1", NORTH, user="ann")
    await put(index, "acme", "bob-1", NORTH, user="bob")
    hits = await index.query(NORTH, scope("acme", user="ann"), limit=10)
    assert [hit.payload["ref"] for hit in hits] == ["ann-1"]


async def test_hits_come_best_first_with_cosine_scores(index: VectorIndex) -> None:
    await put(index, "acme", "east", EAST)
    await put(index, "acme", "north", NORTH)
    await put(index, "acme", "between", NORTH_EAST)
    hits = await index.query(NORTH, scope("acme"), limit=3)
    assert [hit.payload["ref"] for hit in hits] == ["north", "between", "east"]
    assert [hit.score for hit in hits] == pytest.approx([1.0, 0.5**0.5, 0.0], abs=1e-5)


async def test_min_score_drops_the_weaker_hits(index: VectorIndex) -> None:
    await put(index, "acme", "north", NORTH)
    await put(index, "acme", "east", EAST)
    hits = await index.query(NORTH, scope("acme"), limit=10, min_score=0.5)
    assert [hit.payload["ref"] for hit in hits] == ["north"]


async def test_an_upsert_with_the_same_id_replaces_the_point(index: VectorIndex) -> None:
    await put(index, "acme", "fact", NORTH, text="first")
    await put(index, "acme", "fact", EAST, text="second")
    assert await index.count(scope("acme")) == 1
    found = await index.payloads(scope("acme", refs=["fact"]), 10)
    assert [p["text"] for p in found] == ["second"]


async def test_an_id_lookup_reaches_only_the_callers_tenant(index: VectorIndex) -> None:
    await put(index, "acme", "shared-ref", NORTH, text="acme's")
    await put(index, "globex", "shared-ref", NORTH, text="globex's")
    found = await index.payloads(scope("globex", refs=["shared-ref"]), 10)
    assert [p["text"] for p in found] == ["globex's"]


async def test_delete_removes_exactly_its_scope(index: VectorIndex) -> None:
    await put(index, "acme", "ann-1", NORTH, user="ann")
    await put(index, "acme", "ann-2", EAST, user="ann")
    await put(index, "acme", "bob-1", NORTH, user="bob")
    await put(index, "globex", "ann-1", NORTH, user="ann")
    await index.delete(scope("acme", user="ann"))
    assert refs(await index.payloads(scope("acme"), 10)) == {"bob-1"}
    assert refs(await index.payloads(scope("globex"), 10)) == {"ann-1"}


async def test_count_is_exact_per_scope(index: VectorIndex) -> None:
    for n in range(5):
        await put(index, "acme", f"s1-{n}", NORTH, session="s1")
    await put(index, "acme", "s2-0", NORTH, session="s2")
    assert await index.count(scope("acme", session="s1")) == 5
    assert await index.count(scope("acme")) == 6


@pytest.mark.parametrize("value", ["fruit", 3, 1])
async def test_a_metadata_condition_matches_the_exact_value_and_type(
    index: VectorIndex, value: str | int
) -> None:
    for ref, stored in [("text", "fruit"), ("number", 3), ("flag", True), ("one", 1)]:
        await put(index, "acme", ref, NORTH, metadata={"k": stored})
    found = await index.payloads(scope("acme", metadata={"k": value}), 10)
    assert [p["metadata"]["k"] for p in found] == [value]
    assert all(type(p["metadata"]["k"]) is type(value) for p in found)


async def test_payloads_come_back_as_stored(index: VectorIndex) -> None:
    payload = {"text": "ünïcode ✓", "metadata": {"nested": {"list": [1, "two", None]}}}
    await put(index, "acme", "p", NORTH, **payload)
    (found,) = await index.payloads(scope("acme", refs=["p"]), 1)
    assert found == {"tenant": "acme", "ref": "p", **payload}


async def test_an_unknown_tenant_finds_nothing(index: VectorIndex) -> None:
    await put(index, "acme", "a", NORTH)
    tenant = f"t-{uuid.uuid4().hex}"
    assert await index.query(NORTH, scope(tenant), limit=5) == []
    assert await index.count(scope(tenant)) == 0
