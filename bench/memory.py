"""How long semantic recall takes as the embedded memory store grows: 1k, 10k and 100k points.

    .venv/bin/python bench/memory.py [--queries 1000] [--peer-seconds 30] [--no-peer]

Method. One store grows through the sizes; at each size the bench times ``store.search`` — what
the memory process runs for a chat recall: embed the query with the default embedder
(hashed-ngrams, 384 dimensions), query the tenant's memories of one user, top 5, and build the
results. The points are laid out as a platform's memories would be: tenants of 1,000 memories,
10 users of 100 memories each, so a collection of 100k points holds 100 tenants and every recall's
scope is 100 points, whatever the collection's size. Stored vectors are random unit vectors of
the embedder's size (embedding 100k texts would take longer than the measurement and change
nothing in it); payloads are the store's own (tenant, ref, user, session, role, 200 characters
of text, metadata, timestamp). Loading uses each engine's batch write and is not timed.

Two engines, side by side, both behind memory's ``VectorIndex``:
  edge   the embedded default: a Qdrant edge shard in process (payload indexes, no server);
  local  the former default, qdrant-client's local mode, which scores every point in Python.
Local mode is given at most ``--peer-seconds`` of queries per size (at least 5 queries); the
table says how many it ran.

The edge engine is also timed recalling tenant-wide (no user: a role granted tenant-wide memory),
a scope of 1,000 points; and, apart, as one user's own memories grow to 1k, 5k, 20k and 100k (a
chat turn stores one; their vectors are their texts' own): scanning every point of the scope,
its recall grows with what the scope holds; read from an indexed generation, which a child
process builds with an HNSW graph (see handlers/memory/generations.py), it does not
(``one_user_indexed_recall_p50_ms_*``).

Prints progress while loading, a table of p50 and p99 per size, then one JSON line:
{"recall_p50_ms_1k": ..., "recall_p50_ms_10k": ..., "recall_p50_ms_100k": ...} for the edge
engine's user-scoped recall, with the p99s, tenant-wide recall and local mode's figures as further
keys. The target is p50 <= 2 ms at 100k.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qdrant_edge as edge
from qdrant_client import AsyncQdrantClient, models

from handlers.memory import store
from handlers.memory.edge_index import EdgeIndex
from handlers.memory.embeddings import HashedNgrams
from handlers.memory.generations import WRITTEN
from handlers.memory.server_index import ServerIndex
from handlers.memory.vectors import Vectors, point_id

SIZES = (1_000, 10_000, 100_000)
ONE_USER_SIZES = (1_000, 5_000, 20_000, 100_000)
TENANT_SIZE = 1_000
USERS = 10
BATCH = 1_000
WORDS = (
    "deploy staging cluster invoice garden paris tea report budget roadmap meeting release "
    "database backup customer refund travel hotel flight design review hiring onboarding"
).split()


def label(size: int) -> str:
    return f"{size // 1000}k"


def payload(n: int, rng: random.Random) -> dict[str, Any]:
    tenant = f"tenant-{n // TENANT_SIZE}"
    text = " ".join(rng.choice(WORDS) for _ in range(40))[:200]
    return {
        "tenant": tenant,
        "ref": f"m-{n}",
        "text": text,
        "metadata": {"source": "bench"},
        "created_at": datetime.now(UTC).isoformat(),
        "user": f"user-{n % USERS}",
        "session": f"session-{n % 37}",
        "role": "user",
    }


def unit_vectors(count: int, dimension: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((count, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


async def load(
    name: str, index: EdgeIndex | ServerIndex, start: int, stop: int, dimension: int
) -> None:
    rng, vrng = random.Random(start), np.random.default_rng(start)
    for first in range(start, stop, BATCH):
        last = min(stop, first + BATCH)
        vectors = unit_vectors(last - first, dimension, vrng)
        rows = [(n, vectors[n - first].tolist(), payload(n, rng)) for n in range(first, last)]
        if isinstance(index, EdgeIndex):
            points = [edge.Point(point_id(p["tenant"], p["ref"]), v, p) for _, v, p in rows]
            index.shard.update(edge.UpdateOperation.upsert_points(points))
        else:
            structs = [
                models.PointStruct(id=point_id(p["tenant"], p["ref"]), vector=v, payload=p)
                for _, v, p in rows
            ]
            await index.client.upsert(index.collection, points=structs, wait=True)
        if last % 10_000 == 0 or last == stop:
            print(f"  loading {name}: {last:,}/{stop:,} points", flush=True)
    if isinstance(index, EdgeIndex):
        index.shard.flush()


async def measure(
    memory: Vectors,
    size: int,
    queries: int,
    budget: float | None = None,
    tenant_wide: bool = False,
) -> list[float]:
    """Recall timings in ms; ``tenant_wide`` recalls across all users of the tenant (a role the
    tenant grants tenant-wide memory), a scope of 1,000 points instead of 100."""
    rng = random.Random(size)
    tenants = size // TENANT_SIZE
    timings: list[float] = []
    deadline = time.monotonic() + budget if budget is not None else None
    warmup = min(50, queries) if budget is None else 1
    for n in range(warmup + queries):
        tenant = f"tenant-{rng.randrange(tenants)}"
        user = None if tenant_wide else f"user-{rng.randrange(USERS)}"
        query = " ".join(rng.choice(WORDS) for _ in range(6))
        started = time.perf_counter_ns()
        found = await store.search(memory, tenant, query, top_k=5, user=user)
        elapsed = (time.perf_counter_ns() - started) / 1e6
        assert len(found) == 5 and all(m.tenant == tenant for m in found)
        assert user is None or all(m.user == user for m in found)
        if n >= warmup:
            timings.append(elapsed)
        if deadline is not None and len(timings) >= 5 and time.monotonic() > deadline:
            break
    return timings


async def owner_recalls(memory: Vectors, rng: random.Random, queries: int) -> list[float]:
    """The times, in ms, of ``queries`` recalls of the one user's memories."""
    timings: list[float] = []
    for _ in range(queries):
        query = " ".join(rng.choice(WORDS) for _ in range(6))
        started = time.perf_counter_ns()
        await store.search(memory, "solo", query, top_k=5, user="owner")
        timings.append((time.perf_counter_ns() - started) / 1e6)
    return timings


async def one_user(data_dir: Path, embedder: HashedNgrams, queries: int) -> dict[str, float]:
    """Recall p50 as one user's own memories grow (every chat turn stores one): scanning them
    all, as the payload indexes bound a scan to the scope and no HNSW graph is built in the
    serving process; then from an indexed generation a child process built (see
    handlers/memory/generations.py)."""
    index = await EdgeIndex.open(data_dir, "one-user", embedder)
    figures: dict[str, float] = {}
    try:
        rng = random.Random(7)
        loaded = 0
        for size in ONE_USER_SIZES:
            # Stamped as the index stamps its own writes, so that builds see them; embedded
            # from their texts, as a graph's search depends on the vectors (a scan's does not).
            payloads = [
                {**payload(n, rng), "tenant": "solo", "user": "owner"} for n in range(loaded, size)
            ]
            vectors = await embedder.embed([p["text"] for p in payloads])
            points = []
            for p, v in zip(payloads, vectors, strict=True):
                p[WRITTEN] = index.generations.stamp()
                points.append(edge.Point(point_id("solo", p["ref"]), v, p))
            for first in range(0, len(points), BATCH):
                index.shard.update(
                    edge.UpdateOperation.upsert_points(points[first : first + BATCH])
                )
            loaded = size
            memory = Vectors(index, embedder)
            # First without the generation: the scan of every point it took before there were.
            generation, index.generations.current = index.generations.current, None
            timings = await owner_recalls(memory, rng, min(queries, 300))
            figures[f"one_user_recall_p50_ms_{label(size)}"] = round(percentile(timings, 0.5), 3)
            index.generations.current = generation
            building = time.perf_counter()
            await index.generations.build()
            built = time.perf_counter() - building
            indexed = await owner_recalls(memory, rng, min(queries, 300))
            key = f"one_user_indexed_recall_p50_ms_{label(size)}"
            figures[key] = round(percentile(indexed, 0.5), 3)
            print(
                f"  one user holding {size:>6,} memories: recall p50 "
                f"{percentile(timings, 0.5):7.3f} ms scanning them all, "
                f"{percentile(indexed, 0.5):7.3f} ms from an indexed generation "
                f"(built in {built:.1f} s by a child process)",
                flush=True,
            )
    finally:
        await index.close()
    return figures


def percentile(timings: list[float], fraction: float) -> float:
    ordered = sorted(timings)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(queries: int, peer_seconds: float, peer: bool) -> dict[str, float]:
    embedder = HashedNgrams()
    figures: dict[str, float] = {}
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="soma-bench-memory-") as folder:
        data_dir = Path(folder)
        edge_index = await EdgeIndex.open(data_dir, "bench", embedder)
        local_index: ServerIndex | None = None
        if peer:
            client = AsyncQdrantClient(path=str(data_dir / "local"))
            local_index = await ServerIndex.on(client, "bench", embedder)
        try:
            loaded = 0
            for size in SIZES:
                await load("edge", edge_index, loaded, size, embedder.dimension)
                if local_index is not None:
                    await load("local", local_index, loaded, size, embedder.dimension)
                loaded = size
                timings = await measure(Vectors(edge_index, embedder), size, queries)
                p50, p99 = percentile(timings, 0.5), percentile(timings, 0.99)
                figures[f"recall_p50_ms_{label(size)}"] = round(p50, 3)
                figures[f"recall_p99_ms_{label(size)}"] = round(p99, 3)
                wide = await measure(Vectors(edge_index, embedder), size, queries, tenant_wide=True)
                wide50 = percentile(wide, 0.5)
                figures[f"tenant_wide_recall_p50_ms_{label(size)}"] = round(wide50, 3)
                row = (
                    f"  {size:>7,}   {p50:8.3f} {p99:8.3f} {wide50:10.3f}  ({len(timings)} queries)"
                )
                if local_index is not None:
                    print(f"  timing local at {size:,} (at most {peer_seconds:g} s)", flush=True)
                    peer_timings = await measure(
                        Vectors(local_index, embedder), size, queries, budget=peer_seconds
                    )
                    lp50, lp99 = percentile(peer_timings, 0.5), percentile(peer_timings, 0.99)
                    figures[f"local_recall_p50_ms_{label(size)}"] = round(lp50, 3)
                    figures[f"local_recall_p99_ms_{label(size)}"] = round(lp99, 3)
                    row += f"   {lp50:9.3f} {lp99:9.3f}  ({len(peer_timings)} queries)"
                rows.append(row)
                print(rows[-1], flush=True)
        finally:
            await edge_index.close()
            if local_index is not None:
                await local_index.close()
        figures.update(await one_user(data_dir, embedder, queries))
    load_average = os.getloadavg()[0]
    print(
        f"recall, tenant + user scope of 100 points, top 5, hashed-ngrams-384 "
        f"(load average {load_average:.1f} on {os.cpu_count()} CPUs); tenant-wide: "
        "a scope of 1,000 points"
    )
    header = "   points   edge p50 edge p99 tenant-wide p50 (ms)"
    if peer:
        header += "          local p50 local p99 (ms)"
    print(header)
    print("\n".join(rows))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--peer-seconds", type=float, default=30.0)
    parser.add_argument("--no-peer", action="store_true", help="time the edge engine only")
    args = parser.parse_args()
    # Local mode warns past 20k points that it is not meant for them: that is what is measured.
    warnings.simplefilter("ignore", UserWarning)
    figures = asyncio.run(run(args.queries, args.peer_seconds, not args.no_peer))
    keys = [f"recall_p50_ms_{label(size)}" for size in SIZES]
    ordered = {key: figures[key] for key in keys}
    ordered.update({k: v for k, v in figures.items() if k not in ordered})
    print(json.dumps(ordered))


if __name__ == "__main__":
    main()
