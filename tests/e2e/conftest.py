"""The whole system as real OS processes: every handler and the saga runner on one nats-server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from bus.connection import connect
from bus.request import Requester
from tests.servers import ROOT, NatsServer, nats_server, postgres_database, stop_processes

PROCESSES = ["policy", "memory", "slm", "tools", "sagas"]


@dataclass
class System:
    nats: NatsServer
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]]
    requester: Requester | None = None


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    data = tmp_path_factory.mktemp("system")
    with nats_server() as server:
        with postgres_database() if request.param == "postgres" else _nothing() as db_url:
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "NATS_URL": server.url,
                "SOMA_DATA_DIR": str(data),
                "SOMA_RETRY_INITIAL": "0.2",
            }
            env.pop("DATABASE_URL", None)
            if db_url:
                env["DATABASE_URL"] = db_url
            subprocess.run(
                [sys.executable, "-m", "soma.cli", "migrate"],
                env=env,
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            procs = {
                name: subprocess.Popen(
                    [sys.executable, "-m", "soma.cli", "run", name], env=env, cwd=ROOT
                )
                for name in PROCESSES
            }
            try:
                yield System(server, env, procs)
            finally:
                stop_processes(procs.values())


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def wait_for_consumers(js, names: list[str], timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from schemas.catalogue import STREAMS

    async with asyncio.timeout(timeout):
        for name in names:
            stream = STREAMS["evt"] if name.endswith("-events") else STREAMS["cmd"]
            while True:
                try:
                    await js.consumer_info(stream, name)
                    break
                except Exception:
                    await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def requester(system: System) -> AsyncIterator[Requester]:
    nc = await connect(system.nats.url, "e2e")
    await wait_for_consumers(nc.jetstream(), [*PROCESSES, "sagas-events"])
    requester = Requester(nc, nc.jetstream())
    await requester.start()
    yield requester
    await requester.close()
    await nc.close()
