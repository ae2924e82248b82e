"""The embedded store's own promises: its folder outlives the process, one process owns it, and
memories kept by the former local-mode store are carried over."""

from __future__ import annotations

import asyncio
import signal
import sys
import warnings
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from handlers.memory import store
from handlers.memory.edge_index import EdgeIndex, ShardInUse, shard_folder
from handlers.memory.embeddings import HashedNgrams
from handlers.memory.server_index import ServerIndex
from handlers.memory.vectors import Vectors, open_index, scope

REPO = Path(__file__).resolve().parents[2]
EMBEDDER = HashedNgrams()

# A second process that opens the store, adds one memory, says so, then waits to be stopped.
OWNER = """
import asyncio, sys
from pathlib import Path
from handlers.memory import store
from handlers.memory.embeddings import HashedNgrams
from handlers.memory.vectors import Vectors, open_index

async def main() -> None:
    embedder = HashedNgrams()
    index = await open_index(None, Path(sys.argv[1]), "soma_memory", embedder)
    await store.add(Vectors(index, embedder), "acme", "written before the kill", id="m1")
    print("written", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def start_owner(data_dir: Path) -> asyncio.subprocess.Process:
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER, str(data_dir), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert owner.stdout is not None
    line = await asyncio.wait_for(owner.stdout.readline(), timeout=60)
    if line.strip() != b"written":
        assert owner.stderr is not None
        pytest.fail(f"the owner process did not start: {(await owner.stderr.read()).decode()}")
    return owner


async def kill(owner: asyncio.subprocess.Process) -> None:
    owner.send_signal(signal.SIGKILL)
    await owner.wait()


async def opened(data_dir: Path) -> Vectors:
    return Vectors(await open_index(None, data_dir, "soma_memory", EMBEDDER), EMBEDDER)


async def test_memories_are_there_after_the_store_is_reopened(tmp_path: Path) -> None:
    first = await opened(tmp_path)
    await store.add(first, "acme", "the staging cluster runs on arm", id="m1", user="ann")
    await first.index.close()
    again = await opened(tmp_path)
    try:
        found = await store.search(again, "acme", "staging cluster", user="ann")
        assert [m.id for m in found] == ["m1"]
    finally:
        await again.index.close()


async def test_a_memory_written_survives_kill_9_of_its_process(tmp_path: Path) -> None:
    await kill(await start_owner(tmp_path))
    after = await opened(tmp_path)  # the kernel released the dead owner's lock
    try:
        memory = await store.get(after, "acme", "m1")
        assert memory is not None and memory.text == "written before the kill"
    finally:
        await after.index.close()


async def test_a_second_process_is_refused_with_the_folder_named(tmp_path: Path) -> None:
    owner = await start_owner(tmp_path)
    try:
        with pytest.raises(ShardInUse) as refused:
            await open_index(None, tmp_path, "soma_memory", EMBEDDER)
        assert str(shard_folder(tmp_path, "soma_memory")) in str(refused.value)
        assert str(owner.pid) in str(refused.value)
    finally:
        await kill(owner)


async def test_openers_in_one_process_share_the_store_until_the_last_closes(
    tmp_path: Path,
) -> None:
    first = await opened(tmp_path)
    second = await opened(tmp_path)
    assert first.index is second.index
    await second.index.close()
    await store.add(first, "acme", "still open for the first", id="m1")  # not closed yet
    await first.index.close()
    third = await opened(tmp_path)
    try:
        assert third.index is not first.index
        assert await store.get(third, "acme", "m1") is not None
    finally:
        await third.index.close()


async def test_a_store_built_by_another_embedder_is_refused(tmp_path: Path) -> None:
    index = await EdgeIndex.open(tmp_path, "c", HashedNgrams(64))
    await index.close()
    with pytest.raises(RuntimeError, match="SOMA_MEMORY_COLLECTION"):
        await EdgeIndex.open(tmp_path, "c", HashedNgrams(32))


@pytest.mark.parametrize("collection", ["../elsewhere", "a/b", ".hidden", ""])
async def test_a_collection_name_that_is_not_a_plain_folder_name_is_refused(
    tmp_path: Path, collection: str
) -> None:
    with pytest.raises(ValueError, match="SOMA_MEMORY_COLLECTION"):
        await EdgeIndex.open(tmp_path, collection, EMBEDDER)


async def former_local_store(data_dir: Path) -> None:
    """Memories written the way the embedded default stored them before: qdrant-client's local
    mode in ``SOMA_DATA_DIR/qdrant``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # local mode: payload indexes do nothing
        client = AsyncQdrantClient(path=str(data_dir / "qdrant"))
        old = Vectors(await ServerIndex.on(client, "soma_memory", EMBEDDER), EMBEDDER)
    await store.add(old, "acme", "kept from before", id="old-1", user="ann", session="s1")
    await store.add(old, "globex", "another tenant's", id="old-1")
    await old.index.close()


async def test_the_former_local_store_is_carried_over_on_first_open(tmp_path: Path) -> None:
    await former_local_store(tmp_path)
    moved = await opened(tmp_path)
    try:
        found = await store.search(moved, "acme", "kept from before", user="ann")
        assert [(m.id, m.text, m.session) for m in found] == [("old-1", "kept from before", "s1")]
        assert await moved.index.count(scope("globex")) == 1
    finally:
        await moved.index.close()


async def test_the_former_store_is_carried_over_only_once(tmp_path: Path) -> None:
    await former_local_store(tmp_path)
    first = await opened(tmp_path)
    await store.delete(first, "acme", ["old-1"])
    await first.index.close()
    again = await opened(tmp_path)
    try:
        assert await store.get(again, "acme", "old-1") is None
    finally:
        await again.index.close()
