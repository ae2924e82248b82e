"""Kill -9 of real runner processes: every saga still finishes, no effect is lost or doubled."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus import runtime
from bus.connection import connect
from bus.publish import envelope_for, publish
from bus.service import Connected
from kernel.db import make_engine, migrate
from sagas import queries
from schemas.envelope import new_id
from schemas.sagas import SagaSignal, SagaStart
from tests.sagas.conftest import saga_settings
from tests.sagas.effects import Effects
from tests.servers import NatsServer

ROOT = Path(__file__).resolve().parents[2]


class Runners:
    def __init__(self, nats_url: str, database_url: str, env: dict[str, str] | None = None) -> None:
        self.nats_url = nats_url
        self.database_url = database_url
        self.env = env or {}
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.sagas.runner_proc",
                self.nats_url,
                self.database_url,
                *extra,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)


@pytest.fixture
async def setup(module_nats: NatsServer, database_url: str, tmp_path: Path) -> AsyncIterator[tuple]:  # type: ignore[type-arg]
    settings = saga_settings(module_nats.url, database_url, tmp_path)
    await migrate(database_url, "sagas")
    effects = Effects(delay=0.01)
    tools = await runtime.start(effects.service(), settings)
    nc = await connect(module_nats.url, "durability-tests")
    runners = Runners(module_nats.url, database_url)
    db = make_engine(database_url)
    yield effects, Connected(nc, nc.jetstream()), runners, db
    runners.stop_all()
    await nc.close()
    await tools.stop()
    await db.dispose()


async def start_saga(bus, saga_type: str, input: dict | None = None) -> str:  # type: ignore[no-untyped-def,type-arg]
    saga_id = new_id()
    cmd = SagaStart(saga_type=saga_type, saga_id=saga_id, input=input or {})
    await publish(bus, cmd, envelope_for(cmd, tenant="acme", correlation_id=saga_id))
    return saga_id


async def all_finished(db, ids: list[str], timeout: float) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while True:
        rows = [await queries.get_instance(db, i) for i in ids]
        if all(r and r["finished_at"] for r in rows):
            return rows  # type: ignore[return-value]
        if time.monotonic() > deadline:
            unfinished = [r for r in rows if not (r and r["finished_at"])]
            raise AssertionError(f"{len(unfinished)} sagas unfinished, e.g. {unfinished[:1]}")
        await asyncio.sleep(0.1)


async def test_kill_9_of_the_runner_at_random_points_leaves_every_saga_able_to_finish(
    setup,
) -> None:  # type: ignore[no-untyped-def]
    effects, bus, runners, db = setup
    rng = random.Random(7)
    runner = runners.start()
    ids = [await start_saga(bus, "three_steps") for _ in range(50)]
    for _ in range(3):
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        runners.kill(runner)
        runner = runners.start()
    rows = await all_finished(db, ids, timeout=60)
    assert {r["state"] for r in rows} == {"completed"}
    for saga_id in ids:
        assert effects.applied[f"{saga_id}:1"] == 1
        assert effects.applied[f"{saga_id}:2"] == 1
        history = await queries.get_history(db, saga_id)
        steps = [h["step"] for h in history if h["event"] == "step"]
        assert steps == ["first", "second", "third", "done"], "each step ran exactly once"


async def test_a_two_second_timer_fires_within_a_second_of_its_time_across_a_restart(setup) -> None:  # type: ignore[no-untyped-def]
    effects, bus, runners, db = setup
    runner = runners.start()
    saga_id = await start_saga(bus, "sleeper", {"seconds": 2.0})
    await asyncio.sleep(0.3)
    runners.kill(runner)
    runners.start()
    # On a busy machine the new runner may come up after the timer's time: it then fires it
    # at once, so the bound is a second from whichever is later.
    ready_at = time.time()
    (row,) = await all_finished(db, [saga_id], timeout=30)
    history = await queries.get_history(db, saga_id)
    fired = next(h["at"] for h in history if h["event"] == "timer_fired")
    due = row["created_at"] + 2.0
    assert row["state"] == "completed"
    assert fired >= due, f"fired {due - fired:.2f}s early"
    assert fired - max(due, ready_at) < 1.0, (
        f"fired {fired - row['created_at']:.2f}s after start, "
        f"the runner ready {ready_at - row['created_at']:.2f}s after start"
    )


async def test_an_instance_finishes_on_the_definition_version_it_started_with(setup) -> None:  # type: ignore[no-untyped-def]
    effects, bus, runners, db = setup
    old = runners.start()
    first = await start_saga(bus, "versioned")
    async with asyncio.timeout(30):  # started by the old runner, on version 1
        while await queries.get_instance(db, first) is None:
            await asyncio.sleep(0.05)
    runners.kill(old)
    runners.start("--with-v2")
    second = await start_saga(bus, "versioned")
    for saga_id in (first, second):
        cmd = SagaSignal(saga_id=saga_id, name="go")
        await publish(bus, cmd, envelope_for(cmd, tenant="acme"))
    rows = await all_finished(db, [first, second], timeout=30)
    assert [r["result"]["version"] for r in rows] == [1, 2]


async def test_two_runners_on_one_database_never_advance_the_same_instance_twice(setup) -> None:  # type: ignore[no-untyped-def]
    effects, bus, runners, db = setup
    runners.start()
    runners.start()
    ids = [await start_saga(bus, "three_steps") for _ in range(100)]
    rows = await all_finished(db, ids, timeout=90)
    assert {r["state"] for r in rows} == {"completed"}
    for saga_id in ids:
        history = await queries.get_history(db, saga_id)
        steps = [h["step"] for h in history if h["event"] == "step"]
        assert steps == ["first", "second", "third", "done"]
        sent = [h for h in history if h["event"] == "command_sent"]
        assert len(sent) == 2, "no command sent twice"
        assert effects.deliveries[f"{saga_id}:1"] == 1
        assert effects.deliveries[f"{saga_id}:2"] == 1


async def test_kill_9_of_a_group_mode_runner_loses_no_command_and_doubles_none(setup) -> None:  # type: ignore[no-untyped-def]
    effects, bus, runners, db = setup
    rng = random.Random(11)
    runner = runners.start()
    ids = [await start_saga(bus, "grouped") for _ in range(50)]
    for _ in range(3):
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        runners.kill(runner)
        runner = runners.start()
    rows = await all_finished(db, ids, timeout=90)
    assert {r["state"] for r in rows} == {"completed"}
    for saga_id, row in zip(ids, rows, strict=True):
        assert row["result"] == {"outputs": [f"{saga_id}:{n}" for n in (1, 2, 3, 4)]}
        for n in (1, 2, 3, 4):
            assert effects.applied[f"{saga_id}:{n}"] == 1
            assert effects.deliveries[f"{saga_id}:{n}"] == 1, "a re-sent command is dropped"
        history = await queries.get_history(db, saga_id)
        steps = [h["step"] for h in history if h["event"] == "step"]
        assert steps == ["g_first", "g_second", "g_joined", "g_after_reply", "g_done"]
