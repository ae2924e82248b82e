"""Kill -9 under load loses nothing and doubles nothing.

The whole system runs under ``soma up`` — embedded (SQLite, a local Qdrant folder,
Idempotency-Key records in the bus) and on real services (PostgreSQL, Redis). While clients send
chat turns and agent tasks (whose steps run a tool) through the gateway, one process type at a time
is killed with SIGKILL and the supervisor restarts it; last, everything is killed at once and
started again on the same data. After each fault, once the system has settled:

- lost: none — every turn a client sent is answered (clients retry with the same
  Idempotency-Key, as real ones do) and every agent task completes;
- doubled: none — each turn ran as one chat turn saga, wrote memory once and has one model usage
  record in the event trail, each task one per model call it made, and analytics counted every
  model call of the trail exactly once;
- stuck: no saga instance is left unfinished, no outbox row unpublished, no consumer behind;
- dead letters: SOMA_DLQ stays empty.

One system per variant is shared by its scenarios, each of which must leave it settled. The
figures of each scenario are printed (``pytest -s``) and written to ``fault-figures.json`` in
pytest's base temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.connection import connect
from soma.terminal import quiet_disconnect
from tests.faults.ledger import Figures, account, last_event_seq, model_requests, settle
from tests.faults.load import Load
from tests.faults.system import PROCESSES, System, fault_env
from tests.servers import postgres_database, require_service

REDIS_URL = "redis://127.0.0.1:6379/0"
RECORDED: list[Figures] = []


@pytest.fixture(scope="module", params=["embedded", "services"])
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """``embedded``: nothing but the data folder; ``services``: PostgreSQL and Redis, as a
    deployment runs."""
    data = tmp_path_factory.mktemp(f"faults-{request.param}") / "data"
    if request.param == "services":
        require_service("Redis", "127.0.0.1", 6379)
        with postgres_database() as database_url:
            yield from _running(fault_env(data, database_url=database_url, redis_url=REDIS_URL))
    else:
        yield from _running(fault_env(data, database_url=None, redis_url=None))
    _summarise(request.config, f"{request.param}-")


def _summarise(config: pytest.Config, prefix: str) -> None:
    """The variant's figures in pytest's own report, so they show without ``-s`` too."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        for figures in RECORDED:
            if figures.scenario.startswith(prefix):
                reporter.write_line(figures.line())


def _running(env: dict[str, str]) -> Iterator[System]:
    system = System(env)
    try:
        system.start()
        yield system
    finally:
        system.stop()


def _variant(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["system"])


async def _scenario(system: System, name: str, fault: object, tmp_base: Path) -> Figures:
    began = time.monotonic()
    db = system.engine()
    try:
        nc = await connect(system.nats_url, "faults-ledger")
        try:
            first_event = await last_event_seq(nc.jetstream())
        finally:
            with quiet_disconnect():
                await nc.close()
        counted_before = await model_requests(db)

        load = Load(system.gateway_url, system.api_key, name)

        async def strike() -> None:
            await asyncio.to_thread(fault)  # type: ignore[arg-type]

        await load.run(strike)

        nc = await connect(system.nats_url, "faults-ledger")
        try:
            js = nc.jetstream()
            await settle(js, db)
            figures = await account(
                load, js, db, first_event=first_event, model_requests_before=counted_before
            )
        finally:
            with quiet_disconnect():
                await nc.close()
    finally:
        await db.dispose()
    figures.seconds = time.monotonic() - began
    _record(figures, tmp_base)
    return figures


def _record(figures: Figures, base: Path) -> None:
    RECORDED.append(figures)
    print(figures.line(), flush=True)
    for problem in figures.problems:
        print(f"[faults]   {problem}", flush=True)
    path = base / "fault-figures.json"
    path.write_text(json.dumps([f.as_dict() for f in RECORDED], indent=2))


@pytest.mark.timeout(420)
@pytest.mark.parametrize("process", PROCESSES)
async def test_kill_9_of_one_process_under_load_loses_nothing_and_doubles_nothing(
    system: System,
    process: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    name = f"{_variant(request)}-{process}"
    figures = await _scenario(
        system, name, lambda: system.kill(process), tmp_path_factory.getbasetemp()
    )
    assert figures.problems == [], figures.line()


@pytest.mark.timeout(420)
async def test_a_whole_system_crash_under_load_loses_nothing_and_doubles_nothing(
    system: System, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    name = f"{_variant(request)}-everything"
    figures = await _scenario(system, name, system.restart_all, tmp_path_factory.getbasetemp())
    assert figures.problems == [], figures.line()
