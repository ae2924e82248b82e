"""Memory's vectors in process, on a Qdrant edge shard (``qdrant-edge-py``): the embedded default.

The shard is Qdrant's own engine in a folder under ``SOMA_DATA_DIR``: a write-ahead log (so a
write that returned survives kill -9), and keyword payload indexes on tenant, user, agent,
session and ref. Every query carries the tenant, so the engine reads the tenant's (and the
user's) points from those indexes and scores only them: recall costs what the scope holds, not
what the collection holds.

Three choices follow from measurements of the binding (figures in ``bench/memory.py``):

* Calls run inline on the event loop. Each call holds the GIL from start to end, so
  ``asyncio.to_thread`` would not let the loop run meanwhile; it only adds its hand-off (a
  scoped query took 0.15 ms inline, 0.37 ms through a thread).
* ``optimize()`` (HNSW build, vacuum) is never called while serving: it holds the GIL for its
  whole run, 20 s for 20k points on a shared 2-core machine, which would stall every message of
  the process. A child process builds the graph instead, into an indexed *generation* that
  queries read beside the shard (``generations.py``): a scope's recall scans only what was
  written since the last build (one user holding 20k memories recalled in about 5 ms by
  scanning them all, against 0.5 ms at 1k; ``bench/memory.py``, ``one_user_*``).
* ``flush()`` runs every ``FLUSH_EVERY`` writes and at close (about 10 ms), which bounds the
  log that a restart replays; durability itself comes from the log.

One process owns a shard folder: ``flock`` on a file in the folder refuses a second process with
an error naming the folder (within a process, openers share the one shard).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import IO, Any

import qdrant_edge as edge

from handlers.memory.embeddings import Embedder
from handlers.memory.generations import WRITTEN, Generations, Indexing, create_indexes
from handlers.memory.index import Equals, Hit, Scope
from handlers.memory.local_migration import migrate

log = logging.getLogger(__name__)

FOLDER = "vectors"  # under SOMA_DATA_DIR; one shard folder per collection name
FLUSH_EVERY = 1000
LOCK_FILE = "soma.lock"
# Written last when a shard is created: a folder without it holds an unfinished creation.
RECORD_FILE = "soma.json"
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class ShardInUse(RuntimeError):
    """Another process has the shard folder open."""


# Openers in one process share the shard; the last to close it closes it.
_open: dict[Path, EdgeIndex] = {}


class EdgeIndex:
    def __init__(
        self, folder: Path, shard: edge.EdgeShard, lock: IO[str], generations: Generations
    ) -> None:
        self.folder = folder
        self.shard = shard
        self.generations = generations
        self._lock = lock
        self._users = 1
        self._unflushed = 0

    @classmethod
    async def open(
        cls, data_dir: Path, collection: str, embedder: Embedder, indexing: Indexing | None = None
    ) -> EdgeIndex:
        """The shard of ``collection`` under ``data_dir``, created (or migrated) on first use,
        with its indexed generations (``generations.Indexing``: when they are built and read)."""
        folder = shard_folder(data_dir, collection)
        shared = _open.get(folder)
        if shared is not None:
            _check_record(folder, collection, embedder)
            shared._users += 1
            return shared
        lock = _lock(folder)
        try:
            shard = _load_or_create(folder, data_dir, collection, embedder)
            try:
                generations = Generations.open(
                    folder.parent, collection, shard, embedder.dimension, indexing or Indexing()
                )
            except BaseException:
                shard.close()
                raise
        except BaseException:
            lock.close()
            raise
        index = cls(folder, shard, lock, generations)
        _open[folder] = index
        return index

    async def upsert(self, id: str, vector: list[float], payload: dict[str, Any]) -> None:
        stamped = {**payload, WRITTEN: self.generations.stamp()}
        self.shard.update(edge.UpdateOperation.upsert_points([edge.Point(id, vector, stamped)]))
        self._wrote()
        self.generations.wrote()

    async def query(
        self, vector: list[float], where: Scope, limit: int, min_score: float | None = None
    ) -> list[Hit]:
        found = self.generations.query(vector, edge_filter(where), limit, min_score)
        return [Hit(_unstamped(payload), score) for payload, score in found]

    async def payloads(self, where: Scope, limit: int) -> list[dict[str, Any]]:
        records, _ = self.shard.scroll(
            edge.ScrollRequest(limit=limit, filter=edge_filter(where), with_payload=True)
        )
        return [_unstamped(record.payload) for record in records]

    async def count(self, where: Scope) -> int:
        return self.shard.count(edge.CountRequest(exact=True, filter=edge_filter(where)))

    async def delete(self, where: Scope) -> None:
        self.shard.update(edge.UpdateOperation.delete_points_by_filter(edge_filter(where)))
        self._wrote()
        self.generations.deleted(where)

    async def close(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        del _open[self.folder]
        try:
            await self.generations.close()
            self.shard.flush()
            self.shard.close()
        finally:
            self._lock.close()  # releases the flock

    def _wrote(self) -> None:
        self._unflushed += 1
        if self._unflushed >= FLUSH_EVERY:
            self.shard.flush()
            self._unflushed = 0


def _unstamped(payload: dict[str, Any] | None) -> dict[str, Any]:
    """The payload as its writer gave it: the write's stamp is the index's own."""
    if not payload:
        return {}
    payload.pop(WRITTEN, None)
    return payload


def shard_folder(data_dir: Path, collection: str) -> Path:
    if not _COLLECTION_NAME.match(collection):
        raise ValueError(
            f"SOMA_MEMORY_COLLECTION {collection!r} must match {_COLLECTION_NAME.pattern}: "
            "it names the memory store's folder"
        )
    return (data_dir / FOLDER / collection).resolve()


def edge_filter(where: Scope) -> edge.Filter:
    """``where`` in the edge engine's types, condition for condition, in the same order."""
    must: list[edge.FieldCondition | edge.HasIdCondition] = [
        edge.FieldCondition(key=c.key, match=edge.MatchValue(c.value))
        if isinstance(c, Equals)
        else edge.HasIdCondition(set(c.ids))
        for c in where.must
    ]
    return edge.Filter(must=list(must))


def _lock(folder: Path) -> IO[str]:
    folder.mkdir(parents=True, exist_ok=True)
    lock = (folder / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ShardInUse(
            f"the memory store {folder} is open in another process (pid {holder}); one process "
            "owns it at a time: stop that process, give this one another SOMA_DATA_DIR, "
            "or set QDRANT_URL so that memory processes share a Qdrant server"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _load_or_create(
    folder: Path, data_dir: Path, collection: str, embedder: Embedder
) -> edge.EdgeShard:
    if (folder / RECORD_FILE).exists():
        _check_record(folder, collection, embedder)
        return edge.EdgeShard.load(str(folder))
    _clear_unfinished(folder)
    shard = edge.EdgeShard.create(
        str(folder),
        edge.EdgeConfig(
            vectors=edge.EdgeVectorParams(size=embedder.dimension, distance=edge.Distance.Cosine)
        ),
    )
    try:
        create_indexes(shard)
        moved = migrate(data_dir / "qdrant", collection, embedder, shard)
        if moved:
            log.info("memory: moved %d points of %s into %s", moved, data_dir / "qdrant", folder)
        shard.flush()
        _write_record(folder, embedder)
    except BaseException:
        shard.close()
        raise
    return shard


def _clear_unfinished(folder: Path) -> None:
    """Remove what a creation cut short left behind; the lock file stays, it is held."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _write_record(folder: Path, embedder: Embedder) -> None:
    record = folder / RECORD_FILE
    draft = record.with_suffix(".tmp")
    draft.write_text(json.dumps({"embedder": embedder.name, "dimension": embedder.dimension}))
    with draft.open("rb") as written:
        os.fsync(written.fileno())
    draft.replace(record)


def _check_record(folder: Path, collection: str, embedder: Embedder) -> None:
    with contextlib.suppress(FileNotFoundError):
        record = json.loads((folder / RECORD_FILE).read_text())
        if record.get("dimension") != embedder.dimension or record.get("embedder") not in (
            None,
            embedder.name,
        ):
            raise RuntimeError(
                f"the memory store {folder} ({collection!r}) holds vectors of "
                f"{record.get('embedder') or 'another embedder'} (size {record.get('dimension')}); "
                f"the configured embedder is {embedder.name} (size {embedder.dimension}). "
                "Set SOMA_MEMORY_COLLECTION to a new collection or restore the previous "
                "SOMA_EMBEDDINGS settings."
            )
