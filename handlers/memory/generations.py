"""Recall that does not grow with what a scope holds: an HNSW-indexed copy of the edge shard,
built in a child process, read beside the shard.

qdrant-edge builds its graph only in ``optimize()``, which holds the GIL for its whole run (24 s
for 20k points on a 2-core machine), so the serving process never calls it, and without a graph
a query scans every point its scope holds: one user with 20k memories recalled in 2-5 ms, and a
chat turn stores one. A *generation* takes that scan off: a shard holding the points written up
to its *horizon*, which ``handlers.memory.indexer`` optimizes in a child process (nice 19) from
the previous generation and the points written since. The live shard stays the store: every
write and delete goes there, durably, as before; a generation only answers queries faster.

Every point the live shard stores carries ``_written``, a stamp (microseconds, increasing in a
process and past every horizon) that callers never see. A query asks the generation (a graph
search) and the live shard for the points written after the horizon (a range on the stamp, so
the scan covers only those), keeps a generation hit only when the live shard still holds that
point with a stamp at or before the horizon (not deleted, not rewritten since), and merges the
two by score.

Under ``vectors/.generations/<collection>/``:

    current.json    {"generation": "g-<horizon>", "horizon": <stamp>}; replaced by rename, last
    g-<horizon>/    the generation's shard
    deletes.jsonl   the deletes since the generation's export, each with the stamp it was made
                    at; the next build applies them to the points stamped before it
    building/       a build under way: the export, the child's pid, the new shard

Recovery: only ``current.json`` names what is read; at open, whatever else is there (a build cut
short, a generation replaced) is removed, and a child left building by a killed process is
killed. A point is never lost to a generation: it is in the live shard, and a query reads from
the live shard every point the generation does not vouch for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import qdrant_edge as edge

from handlers.memory.index import Equals, HasIds, Scope

log = logging.getLogger(__name__)

WRITTEN = "_written"  # the stamp's payload key
ROOT = ".generations"  # under the vectors folder; no collection name starts with a dot
CURRENT = "current.json"
DELETES = "deletes.jsonl"
BUILDING = "building"
CHILD_PID = "pid"
NICE = 19  # the child's: serving comes first
EXPORT = "export.msgpack"
# A build starts once this many points are stamped after the horizon, or a quarter of what
# the generation holds if that is more: a build re-indexes the whole generation, so its cost
# is spread over writes in proportion to it.
REINDEX_AT = 4096
# Points read per turn of the event loop while exporting: reading a point's vector costs about
# 80 us, all of it holding the GIL, so a page of 32 holds up the process's messages ~3 ms.
EXPORT_PAGE = 32
# A scope of up to this many points is scanned in the live shard, one query: the graph's
# search (over the two segments a generation keeps), the scan of what came after the horizon
# and the check against the live shard cost about 1.3 ms together at 5,000 points of 384
# dimensions, as much as scanning them (``bench/memory.py``, ``one_user_*``).
SCAN_UP_TO = 5000
INDEXED_FIELDS = ("user", "agent", "session", "ref")  # keyword indexes, beside the tenant's


Found = tuple[dict[str, Any], float]  # a hit's payload and score


@dataclass(frozen=True)
class Indexing:
    """When a build starts and which scopes read a generation (tests make both small)."""

    reindex_at: int = REINDEX_AT
    scan_up_to: int = SCAN_UP_TO


@dataclass
class Generation:
    name: str
    horizon: int
    shard: edge.EdgeShard
    points: int


@dataclass
class Generations:
    """The generations of one collection, seen from the process that owns its live shard."""

    folder: Path
    live: edge.EdgeShard
    dimension: int
    indexing: Indexing = field(default_factory=Indexing)
    current: Generation | None = None
    unindexed: int = 0  # points stamped after the horizon, as far as this process knows
    _last: int = 0  # the last stamp given
    _build: asyncio.Task[None] | None = field(default=None, repr=False)
    _retry_at: int = 0
    failed: str | None = None  # why the last build failed, until one succeeds

    @classmethod
    def open(
        cls, vectors_folder: Path, collection: str, live: edge.EdgeShard, dimension: int,
        indexing: Indexing,
    ) -> Generations:  # fmt: skip
        """Load the current generation, clearing what a killed process left behind."""
        folder = vectors_folder / ROOT / collection
        folder.mkdir(parents=True, exist_ok=True)
        _stop_orphan(folder / BUILDING)
        record = _read_current(folder)
        keep = {CURRENT, DELETES, record["generation"] if record else None}
        for entry in folder.iterdir():
            if entry.name not in keep:
                _remove(entry)
        found = cls(folder, live, dimension, indexing)
        _ensure_stamp_index(live)
        if record is not None:
            try:
                shard = edge.EdgeShard.load(str(folder / record["generation"]))
            except Exception as exc:  # a crash of the machine mid-build, say: scan until rebuilt
                log.warning("memory: generation %s unreadable, rebuilding: %s",
                            record["generation"], exc)  # fmt: skip
                (folder / CURRENT).unlink()
                _remove(folder / record["generation"])
            else:
                points = shard.count(edge.CountRequest(exact=True))
                found.current = Generation(record["generation"], record["horizon"], shard, points)
        horizon = found.current.horizon if found.current else 0
        found._last = max(horizon, _now())
        # Without a generation every point is unindexed, stamped or written before stamps were.
        unindexed = found._after_horizon() if found.current else None
        found.unindexed = live.count(edge.CountRequest(exact=True, filter=unindexed))
        return found

    def stamp(self) -> int:
        """The next write's stamp: past every stamp given and every horizon."""
        self._last = max(self._last + 1, _now())
        return self._last

    def wrote(self) -> None:
        self.unindexed += 1
        if self._build is None and self.unindexed >= max(self._due(), self._retry_at):
            self._build = asyncio.get_running_loop().create_task(self._rebuild())

    def deleted(self, where: Scope) -> None:
        """Log a delete the live shard has had, for the next build to apply to the points
        stamped up to now (until then, the generation's hits are checked against the live
        shard)."""
        conditions = [
            ["eq", c.key, c.value] if isinstance(c, Equals) else ["ids", list(c.ids)]
            for c in where.must
        ]
        line = json.dumps({"must": conditions, "before": self._last})
        with (self.folder / DELETES).open("a") as log_file:
            log_file.write(line + "\n")

    def query(
        self, vector: list[float], where: edge.Filter, limit: int, min_score: float | None
    ) -> list[Found]:
        """The ``limit`` nearest points in ``where``, best first, as (payload, score)."""
        current = self.current
        if current is None or self._estimate(where) <= self.indexing.scan_up_to:
            return self._found(self.live, vector, where, limit, min_score)
        recent = self._found(
            self.live, vector, _and(where, self._after_horizon()), limit, min_score
        )
        ask = limit + 4  # a few spare, for hits deleted or rewritten since the horizon
        while True:
            older = _nearest(current.shard, vector, where, ask, min_score, with_payload=False)
            vouched = self._vouched(older, current.horizon)
            if len(vouched) >= limit or len(older) < ask:
                break
            ask *= 4  # many of the generation's best were deleted or rewritten since
        merged = sorted([*recent, *vouched], key=lambda found: found[1], reverse=True)
        return merged[:limit]

    async def build(self) -> None:
        """Build a generation of every point written so far, now, and wait for it (the
        bench's and an operator's way; serving starts builds by itself)."""
        await self.wait()
        self.failed = None
        self._build = asyncio.get_running_loop().create_task(self._rebuild())
        await self.wait()
        if self.failed is not None:
            raise RuntimeError(self.failed)

    async def wait(self) -> None:
        """Until the build under way, if any, has ended."""
        while self._build is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._build)

    async def close(self) -> None:
        build, self._build = self._build, None
        if build is not None:
            build.cancel()
            with contextlib.suppress(BaseException):
                await build
        if self.current is not None:
            self.current.shard.close()
            self.current = None

    def _estimate(self, where: edge.Filter) -> int:
        """How many points the scope holds, from the payload indexes (tens of microseconds)."""
        return int(self.live.count(edge.CountRequest(exact=False, filter=where)))

    def _due(self) -> int:
        held = self.current.points if self.current else 0
        return max(self.indexing.reindex_at, held // 4)

    def _after_horizon(self) -> edge.Filter:
        horizon = self.current.horizon if self.current else 0
        return edge.Filter(
            must=[edge.FieldCondition(key=WRITTEN, range=edge.RangeFloat(gt=horizon))]
        )

    @staticmethod
    def _found(
        shard: edge.EdgeShard, vector: list[float], where: edge.Filter, limit: int,
        min_score: float | None,
    ) -> list[Found]:  # fmt: skip
        hits = _nearest(shard, vector, where, limit, min_score, with_payload=True)
        return [(hit.payload or {}, hit.score) for hit in hits]

    def _vouched(self, hits: list[edge.ScoredPoint], horizon: int) -> list[Found]:
        """The hits the live shard still holds as the generation has them, with the live
        shard's payloads (read in the same call, so the generation's search reads none)."""
        if not hits:
            return []
        records = {
            r.id: r.payload or {} for r in self.live.retrieve([h.id for h in hits], True, False)
        }
        found = []
        for hit in hits:
            payload = records.get(hit.id)
            if payload is not None and payload.get(WRITTEN, 0) <= horizon:
                found.append((payload, hit.score))
        return found

    async def _rebuild(self) -> None:
        building = self.folder / BUILDING
        try:
            await self._build_once(building)
        except Exception as exc:
            log.warning("memory: building an indexed generation failed, will retry: %s", exc)
            self.failed = str(exc)
            self._retry_at = self.unindexed + self._due()
        finally:  # a finished build has left nothing; a failed or cancelled one, its child
            self._build = None
            _stop_orphan(building)
            _remove(building)

    async def _build_once(self, building: Path) -> None:
        started = time.monotonic()
        horizon = self._last
        previous = self.current
        if previous is not None and previous.horizon == horizon:
            return  # nothing written since the generation's export
        await asyncio.to_thread(_fresh, building)
        exported = await self._export(building / EXPORT, previous, horizon)
        deletes = _read_deletes(self.folder / DELETES)
        (building / DELETES).write_text(json.dumps(deletes))
        name = f"g-{horizon}"
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "handlers.memory.indexer",
            "--export", str(building / EXPORT),
            "--previous", str(self.folder / previous.name) if previous else "",
            "--deletes", str(building / DELETES),
            "--dimension", str(self.dimension),
            "--to", str(building / name),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        (building / CHILD_PID).write_text(str(child.pid))
        out, err = await child.communicate()
        (building / CHILD_PID).unlink()  # it has exited: nothing for a stop to kill
        if child.returncode != 0:
            raise RuntimeError(f"the indexer exited {child.returncode}: {err.decode()[-400:]}")
        points = int(json.loads(out)["points"])
        # Files are moved, loaded, synced and closed in threads: each can take a moment (an
        # fsync after the child's writes waits for them), and none of it needs the GIL for long.
        await asyncio.to_thread((building / name).rename, self.folder / name)
        shard = await asyncio.to_thread(edge.EdgeShard.load, str(self.folder / name))
        await asyncio.to_thread(_write_current, self.folder, name, horizon)
        self.current = Generation(name, horizon, shard, points)
        self.unindexed = max(0, self.unindexed - exported)
        _forget_deletes(self.folder / DELETES, len(deletes))
        self.failed = None
        if previous is not None:
            await asyncio.to_thread(previous.shard.close)
            await asyncio.to_thread(_remove, self.folder / previous.name)
        log.info(
            "memory: indexed generation %s holds %d points (%d new) in %.1f s",
            name, points, exported, time.monotonic() - started,
        )  # fmt: skip

    async def _export(self, path: Path, previous: Generation | None, horizon: int) -> int:
        """Write the points stamped after the previous horizon, up to ``horizon``, a page per
        turn of the event loop. The first build also takes points written before stamps were."""
        since = previous.horizon if previous else None
        upto = edge.FieldCondition(key=WRITTEN, range=edge.RangeFloat(lte=horizon))
        if since is None:
            where = edge.Filter(should=[upto, edge.IsEmptyCondition(WRITTEN)])
        else:
            where = edge.Filter(
                must=[
                    edge.FieldCondition(key=WRITTEN, range=edge.RangeFloat(gt=since, lte=horizon))
                ]
            )
        encoder = msgspec.msgpack.Encoder()
        count = 0
        offset = None
        with path.open("wb") as out:
            while True:
                records, offset = self.live.scroll(
                    edge.ScrollRequest(
                        offset=offset, limit=EXPORT_PAGE, filter=where,
                        with_payload=True, with_vector=True,
                    )
                )  # fmt: skip
                page = [(str(r.id), _plain_vector(r.vector), r.payload or {}) for r in records]
                if page:
                    blob = encoder.encode(page)
                    out.write(len(blob).to_bytes(4, "big") + blob)
                    count += len(page)
                if offset is None:
                    break
                await asyncio.sleep(0)
        return count


def create_indexes(shard: edge.EdgeShard) -> None:
    """The payload indexes every shard of memory has, live or generation."""
    shard.update(
        edge.UpdateOperation.create_field_index("tenant", edge.KeywordIndexParams(is_tenant=True))
    )
    for name in INDEXED_FIELDS:
        shard.update(edge.UpdateOperation.create_field_index(name, edge.PayloadSchemaType.Keyword))
    _ensure_stamp_index(shard)


def logged_scope(conditions: Sequence[Any]) -> Scope:
    """A delete's scope from its logged form (``Generations.deleted``)."""
    return Scope(
        tuple(Equals(c[1], c[2]) if c[0] == "eq" else HasIds(tuple(c[1])) for c in conditions)
    )


def _ensure_stamp_index(shard: edge.EdgeShard) -> None:
    if WRITTEN not in (shard.info().payload_schema or {}):
        shard.update(
            edge.UpdateOperation.create_field_index(
                WRITTEN, edge.IntegerIndexParams(lookup=False, range=True)
            )
        )


def _nearest(
    shard: edge.EdgeShard, vector: list[float], where: edge.Filter, limit: int,
    min_score: float | None, *, with_payload: bool,
) -> list[edge.ScoredPoint]:  # fmt: skip
    return list(
        shard.query(
            edge.QueryRequest(
                limit=limit,
                query=edge.Query.Nearest(vector),
                filter=where,
                with_payload=with_payload,
                score_threshold=min_score,
            )
        )
    )


def _and(where: edge.Filter, more: edge.Filter) -> edge.Filter:
    return edge.Filter(must=[*(where.must or []), *(more.must or [])])


def _plain_vector(vector: Any) -> list[float]:
    """The point's one dense vector (the binding gives a list, or a dict of named ones)."""
    if isinstance(vector, dict):
        (vector,) = vector.values()
    return vector if isinstance(vector, list) else list(vector)


def _now() -> int:
    return time.time_ns() // 1000


def _read_current(folder: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads((folder / CURRENT).read_text())
    except FileNotFoundError:
        return None
    if not (folder / record["generation"]).is_dir():
        log.warning("memory: generation %s is missing; recall scans until one is rebuilt",
                    record["generation"])  # fmt: skip
        (folder / CURRENT).unlink()
        return None
    return record


def _write_current(folder: Path, name: str, horizon: int) -> None:
    draft = folder / (CURRENT + ".tmp")
    with draft.open("w") as out:
        out.write(json.dumps({"generation": name, "horizon": horizon}))
        out.flush()
        os.fsync(out.fileno())
    draft.replace(folder / CURRENT)


def _read_deletes(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _forget_deletes(path: Path, applied: int) -> None:
    """Drop the first ``applied`` deletes, which the new generation has; keep later ones."""
    rest = _read_deletes(path)[applied:]
    draft = path.with_suffix(".tmp")
    draft.write_text("".join(json.dumps(d) + "\n" for d in rest))
    draft.replace(path)


def _stop_orphan(building: Path) -> None:
    """Kill a child a killed process left building (its pid is in the build's folder)."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        pid = int((building / CHILD_PID).read_text())
        if b"handlers.memory.indexer" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


def _fresh(folder: Path) -> None:
    _remove(folder)
    folder.mkdir()


def _remove(entry: Path) -> None:
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
