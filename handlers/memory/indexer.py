"""The child process that builds an indexed generation of memory's edge shard (see
``handlers/memory/generations.py``): the previous generation, copied, plus the points exported
since, less the deletes made since, optimized into an HNSW graph.

It runs at nice 19 and holds its own GIL for the whole ``optimize()``, which is why it is a
process of its own: the memory process serves on meanwhile. Its output is a finished shard
folder or nothing (the parent removes a build that did not exit 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import qdrant_edge as edge

from handlers.memory.edge_index import edge_filter
from handlers.memory.generations import NICE, WRITTEN, create_indexes, logged_scope

UPSERT_BATCH = 512


def build(previous: Path | None, export: Path, deletes: list[dict[str, Any]], dimension: int,
          to: Path) -> int:  # fmt: skip
    """Build the generation at ``to``; the number of points it holds."""
    if previous is not None:
        shutil.copytree(previous, to)
        shard = edge.EdgeShard.load(str(to))
    else:
        shard = edge.EdgeShard.create(str(to), generation_config(dimension))
        create_indexes(shard)
    try:
        batch: list[edge.Point] = []
        for point_id, vector, payload in _points(export):
            batch.append(edge.Point(point_id, vector, payload))
            if len(batch) >= UPSERT_BATCH:
                shard.update(edge.UpdateOperation.upsert_points(batch))
                batch = []
        if batch:
            shard.update(edge.UpdateOperation.upsert_points(batch))
        for delete in deletes:
            _apply_delete(shard, delete)
        shard.optimize()
        shard.flush()
        return int(shard.count(edge.CountRequest(exact=True)))
    finally:
        shard.close()


def generation_config(dimension: int) -> edge.EdgeConfig:
    """A generation is written once, here, and then only read: no write-ahead log (the serving
    process would read it on every load, holding the GIL), and every segment indexed, however
    small (by default a segment under 10 MB of vectors stays a plain one, scanned)."""
    return edge.EdgeConfig(
        vectors=edge.EdgeVectorParams(
            size=dimension,
            distance=edge.Distance.Cosine,
            # A filtered search uses the graph once its scope holds more than 1 MB of vectors
            # (660 points of 384 dimensions; Qdrant's default is 10 MB): at 5,000 points a graph
            # search took 0.31 ms, a scan 0.83, and found the same five.
            hnsw_config=edge.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=1000),
        ),
        optimizers=edge.EdgeOptimizersConfig(indexing_threshold=1),
        wal_enabled=False,
    )


def _points(export: Path) -> Iterator[tuple[str, list[float], dict[str, Any]]]:
    decoder = msgspec.msgpack.Decoder(list[tuple[str, list[float], dict[str, Any]]])
    with export.open("rb") as source:
        while size := source.read(4):
            yield from decoder.decode(source.read(int.from_bytes(size, "big")))


def _apply_delete(shard: edge.EdgeShard, delete: dict[str, Any]) -> None:
    """The delete, on the points stamped before it was made (a later write of the same scope
    stays), and on points written before stamps were."""
    scope = edge_filter(logged_scope(delete["must"]))
    stamped = edge.FieldCondition(key=WRITTEN, range=edge.RangeFloat(lte=delete["before"]))
    for bound in (stamped, edge.IsEmptyCondition(WRITTEN)):
        shard.update(
            edge.UpdateOperation.delete_points_by_filter(
                edge.Filter(must=[*(scope.must or []), bound])
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m handlers.memory.indexer",
        description="Build an indexed generation of memory's edge shard (run by the memory "
        "process; see handlers/memory/generations.py).",
    )
    parser.add_argument("--export", type=Path, required=True, help="the points written since")
    parser.add_argument("--previous", default="", help="the previous generation's folder")
    parser.add_argument("--deletes", type=Path, required=True, help="the deletes since (JSON)")
    parser.add_argument("--dimension", type=int, required=True)
    parser.add_argument("--to", type=Path, required=True, help="the new generation's folder")
    args = parser.parse_args(argv)
    os.nice(NICE)
    points = build(
        Path(args.previous) if args.previous else None,
        args.export,
        json.loads(args.deletes.read_text()),
        args.dimension,
        args.to,
    )
    print(json.dumps({"points": points}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
