"""Indexed generations of the embedded store: recall read from a graph a child process built,
beside the points written since, finds what a scan of everything would, and nothing deleted."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from handlers.memory.edge_index import EdgeIndex
from handlers.memory.embeddings import HashedNgrams
from handlers.memory.generations import BUILDING, CHILD_PID, ROOT, Indexing
from handlers.memory.vectors import point_id, scope

REPO = Path(__file__).resolve().parents[2]
DIMENSION = 16
EMBEDDER = HashedNgrams(DIMENSION)  # only its name and size matter: the tests give vectors
REINDEX_AT = 40
# Builds after 40 writes, and every scope reads the generation, however small.
INDEXING = Indexing(reindex_at=REINDEX_AT, scan_up_to=0)


def vector(rng: random.Random) -> list[float]:
    return [rng.random() - 0.5 for _ in range(DIMENSION)]


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[EdgeIndex]:
    opened = await EdgeIndex.open(tmp_path, "c", EMBEDDER, indexing=INDEXING)
    yield opened
    await opened.close()


async def put(index: EdgeIndex, ref: str, v: list[float], user: str = "ann") -> None:
    await index.upsert(point_id("acme", ref), v, {"tenant": "acme", "ref": ref, "user": user})


async def recalled(
    index: EdgeIndex, v: list[float], limit: int = 5, user: str = "ann"
) -> list[str]:
    return [hit.payload["ref"] for hit in await index.query(v, scope("acme", user=user), limit)]


def scanned(points: dict[str, list[float]], v: list[float], limit: int = 5) -> list[str]:
    """The ``limit`` nearest by cosine, over every point: what recall must find."""
    refs = list(points)
    matrix = np.array([points[r] for r in refs])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = matrix @ (np.array(v) / np.linalg.norm(v))
    return [refs[i] for i in np.argsort(-scores)[:limit]]


def generations_folder(data_dir: Path) -> Path:
    return data_dir / "vectors" / ROOT / "c"


async def test_recall_after_a_build_finds_what_a_scan_of_every_point_finds(
    index: EdgeIndex,
) -> None:
    rng = random.Random(1)
    points = {f"r{n}": vector(rng) for n in range(150)}
    for ref, v in points.items():
        await put(index, ref, v)
    await index.generations.wait()
    assert index.generations.current is not None  # the queries below read a generation
    for _ in range(20):
        v = vector(rng)
        assert await recalled(index, v) == scanned(points, v)


async def test_points_written_while_a_build_runs_are_recalled_with_the_rest(
    index: EdgeIndex,
) -> None:
    rng = random.Random(2)
    points: dict[str, list[float]] = {}
    for n in range(REINDEX_AT + 80):
        points[f"r{n}"] = vector(rng)
        await put(index, f"r{n}", points[f"r{n}"])
        await asyncio.sleep(0)  # the build starts, exports and runs while writes go on
    await index.generations.wait()
    assert index.generations.unindexed > 0  # some were written after its horizon
    for _ in range(20):
        v = vector(rng)
        assert await recalled(index, v) == scanned(points, v)


async def test_a_query_answers_while_the_child_builds(index: EdgeIndex, tmp_path: Path) -> None:
    rng = random.Random(3)
    for n in range(REINDEX_AT):
        await put(index, f"r{n}", vector(rng))
    pid_file = generations_folder(tmp_path) / BUILDING / CHILD_PID
    async with asyncio.timeout(60):
        while not pid_file.exists():
            await asyncio.sleep(0.005)
    assert await recalled(index, vector(rng))  # served from the live shard meanwhile
    await index.generations.wait()


async def test_a_point_deleted_after_a_build_is_not_recalled_now_or_after_the_next(
    index: EdgeIndex,
) -> None:
    rng = random.Random(4)
    points = {f"r{n}": vector(rng) for n in range(REINDEX_AT + 10)}
    for ref, v in points.items():
        await put(index, ref, v)
    await index.generations.wait()
    await index.delete(scope("acme", refs=["r3"]))
    assert "r3" not in await recalled(index, points["r3"])
    for n in range(REINDEX_AT * 2):  # the next build, which applies the delete
        await put(index, f"more{n}", vector(rng), user="bob")
    await index.generations.wait()
    assert "r3" not in await recalled(index, points["r3"])
    assert index.generations.current is not None
    assert index.generations.current.points == len(points) - 1 + REINDEX_AT * 2


async def test_a_scope_deleted_before_a_build_keeps_what_it_stored_after(
    index: EdgeIndex,
) -> None:
    rng = random.Random(5)
    for n in range(10):
        await put(index, f"old{n}", vector(rng))
    await index.delete(scope("acme", user="ann"))
    after = {f"new{n}": vector(rng) for n in range(REINDEX_AT)}
    for ref, v in after.items():
        await put(index, ref, v)
    await index.generations.wait()
    v = vector(rng)
    assert await recalled(index, v, limit=50) == scanned(after, v, limit=50)


async def test_a_point_rewritten_after_a_build_is_recalled_once_as_rewritten(
    index: EdgeIndex,
) -> None:
    rng = random.Random(6)
    for n in range(REINDEX_AT):
        await put(index, f"r{n}", vector(rng))
    await index.generations.wait()
    moved = vector(rng)
    await index.upsert(
        point_id("acme", "r0"), moved, {"tenant": "acme", "ref": "r0", "user": "ann", "v": 2}
    )
    hits = await index.query(moved, scope("acme", user="ann"), 10)
    assert [h.payload["ref"] for h in hits].count("r0") == 1
    assert hits[0].payload == {"tenant": "acme", "ref": "r0", "user": "ann", "v": 2}


async def test_the_generation_is_read_again_after_the_store_is_reopened(tmp_path: Path) -> None:
    rng = random.Random(7)
    points = {f"r{n}": vector(rng) for n in range(REINDEX_AT + 5)}
    first = await EdgeIndex.open(tmp_path, "c", EMBEDDER, indexing=INDEXING)
    for ref, v in points.items():
        await put(first, ref, v)
    await first.generations.wait()
    assert first.generations.current is not None
    built = first.generations.current.name
    await first.close()
    again = await EdgeIndex.open(tmp_path, "c", EMBEDDER, indexing=INDEXING)
    try:
        assert again.generations.current is not None
        assert again.generations.current.name == built
        v = vector(rng)
        assert await recalled(again, v) == scanned(points, v)
    finally:
        await again.close()


# A process that writes enough for a build, says so once the child builds, then waits.
BUILDER = f"""
import asyncio, random, sys
from pathlib import Path
from handlers.memory.edge_index import EdgeIndex
from handlers.memory.embeddings import HashedNgrams
from handlers.memory.generations import BUILDING, CHILD_PID, ROOT, Indexing
from handlers.memory.vectors import point_id

async def main() -> None:
    data_dir = Path(sys.argv[1])
    index = await EdgeIndex.open(
        data_dir, "c", HashedNgrams({DIMENSION}), Indexing(reindex_at=20000, scan_up_to=0)
    )
    rng = random.Random(8)
    for n in range(20000):
        v = [rng.random() - 0.5 for _ in range({DIMENSION})]
        ref = f"r{{n}}"
        payload = {{"tenant": "acme", "ref": ref, "user": "ann"}}
        await index.upsert(point_id("acme", ref), v, payload)
    pid_file = data_dir / "vectors" / ROOT / "c" / BUILDING / CHILD_PID
    while not pid_file.exists():
        await asyncio.sleep(0.005)
    print(pid_file.read_text(), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_build_cut_short_by_kill_9_leaves_no_child_and_no_point_lost(
    tmp_path: Path,
) -> None:
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BUILDER, str(tmp_path), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert owner.stdout is not None and owner.stderr is not None
    line = await asyncio.wait_for(owner.stdout.readline(), timeout=120)
    if not line.strip().isdigit():
        pytest.fail(f"the writer did not start a build: {(await owner.stderr.read()).decode()}")
    child = int(line)
    owner.send_signal(signal.SIGKILL)
    await owner.wait()
    reopened = await EdgeIndex.open(tmp_path, "c", EMBEDDER, Indexing(reindex_at=10**9))
    try:
        async with asyncio.timeout(10):  # the orphaned child is stopped
            while not _gone(child):
                await asyncio.sleep(0.01)
        assert not (generations_folder(tmp_path) / BUILDING).exists()
        assert reopened.generations.current is None
        assert await reopened.count(scope("acme", user="ann")) == 20000
        rng = random.Random(8)
        first = [rng.random() - 0.5 for _ in range(DIMENSION)]
        assert (await recalled(reopened, first, limit=1)) == ["r0"]
    finally:
        await reopened.close()


def _gone(pid: int) -> bool:
    """Exited (a zombie too: nobody may reap an orphan in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
