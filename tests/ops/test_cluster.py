"""A 3-node JetStream cluster loses nothing when one of its members is killed under load.

Three nats-servers run ``deploy/nats-cluster.conf`` as shipped — the users and permissions of
``deploy/nats-accounts.conf`` in force — with only the addresses overridden on the command line,
since here the members share one host. ``soma migrate`` creates the streams as the admin user,
replicated three ways (``SOMA_STREAM_REPLICAS=3``), and ``soma up`` runs every process against
all three URLs, each process as its own NATS user. While clients send chat turns and agent tasks
through the gateway, the member leading the commands stream is killed with SIGKILL; a few
seconds later it is started again on its store and catches up. Then the ledger of the fault
suite counts: no turn lost, none doubled, every task completed, nothing stuck, no dead letter.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from bus.connection import connect
from bus.streams import IDEMPOTENCY_BUCKET
from kernel.processes import PROCESSES
from schemas.catalogue import STREAMS
from soma.terminal import quiet_disconnect
from tests.cli.conftest import ROOT
from tests.cli.test_nats_conf import PASSWORDS
from tests.faults.ledger import account, last_event_seq, model_requests, settle
from tests.faults.load import Load
from tests.faults.system import System, fault_env
from tests.servers import free_port, nats_server_binary, postgres_database, wait_port

pytestmark = pytest.mark.slow

CONF = ROOT / "deploy" / "nats-cluster.conf"
MEMBERS = 3
OUTAGE = 6.0  # seconds the cluster runs on two members while the load goes on
CAUGHT_UP_TIMEOUT = 60.0
STREAM_NAMES = (*STREAMS.values(), f"KV_{IDEMPOTENCY_BUCKET}")


@dataclass
class Member:
    """One nats-server of the cluster: its ports, its store and its log survive a restart."""

    name: str
    folder: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    def url(self, user: str) -> str:
        return f"nats://{user}:{PASSWORDS[f'NATS_{user.upper()}_PASSWORD']}@127.0.0.1:{self.port}"


@dataclass
class Cluster:
    members: list[Member]

    def urls(self, user: str) -> str:
        return ",".join(m.url(user) for m in self.members)

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def start(self, member: Member) -> None:
        routes = ",".join(f"nats://127.0.0.1:{m.cluster_port}" for m in self.members)
        member.folder.mkdir(parents=True, exist_ok=True)
        member.log = open(member.folder / "nats.log", "ab")
        addresses = {
            "-a": "127.0.0.1",
            "-p": str(member.port),
            "-m": str(member.http_port),
            "-P": str(member.folder / "nats.pid"),
            "--cluster": f"nats://127.0.0.1:{member.cluster_port}",
            "--routes": routes,
        }
        member.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(CONF), *(a for kv in addresses.items() for a in kv)],
            env={
                "PATH": os.environ.get("PATH", ""),
                "SERVER_NAME": member.name,
                "NATS_STORE_DIR": str(member.folder / "jetstream"),
                **PASSWORDS,
            },
            stdout=member.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(member.port, 30)

    def kill(self, member: Member) -> None:
        assert member.proc is not None
        member.proc.send_signal(signal.SIGKILL)
        member.proc.wait(10)
        if member.log:
            member.log.close()

    def stop(self) -> None:
        for member in self.members:
            if member.proc and member.proc.poll() is None:
                member.proc.terminate()
                try:
                    member.proc.wait(15)
                except subprocess.TimeoutExpired:
                    member.proc.kill()
            if member.log:
                member.log.close()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Every member reports JetStream healthy: the meta group has a leader."""
        deadline = time.monotonic() + timeout
        for member in self.members:
            while True:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{member.http_port}/healthz", timeout=5
                    ) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{member.name} not healthy within {timeout}s")
                time.sleep(0.3)

    def connections(self) -> list[dict[str, Any]]:
        """Every client connection on every member, with the user it authenticated as."""
        found: list[dict[str, Any]] = []
        for member in self.members:
            url = f"http://127.0.0.1:{member.http_port}/connz?auth=true&limit=1024"
            with urllib.request.urlopen(url, timeout=5) as response:
                found.extend(json.load(response).get("connections") or [])
        return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    cluster = Cluster([Member(f"nats-{i}", base / f"nats-{i}") for i in range(MEMBERS)])
    try:
        for member in cluster.members:
            cluster.start(member)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def system(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """``soma migrate`` as admin, then ``soma up`` with every member's URL on PostgreSQL."""
    data = tmp_path_factory.mktemp("cluster-system") / "data"
    with postgres_database() as database_url:
        env = fault_env(data, database_url=database_url, redis_url=None)
        env.update(
            NATS_URL=cluster.urls("admin"),
            SOMA_STREAM_REPLICAS=str(MEMBERS),
            **PASSWORDS,
        )
        _migrate(env)
        system = System(env)
        try:
            system.start()
            yield system
        finally:
            system.stop()


def _migrate(env: dict[str, str]) -> None:
    """The deployment's migration step; the cluster may still be settling its meta leader."""
    deadline = time.monotonic() + 60
    while True:
        result = subprocess.run(
            [sys.executable, "-m", "soma.cli", "migrate"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"soma migrate failed:\n{result.stdout}\n{result.stderr}")
        time.sleep(1)


async def _admin(cluster: Cluster) -> Client:
    return await connect(cluster.urls("admin"), "cluster-test")


async def _replicas_current(js: JetStreamContext, timeout: float) -> dict[str, list[str]]:
    """Per stream, the members that are not (yet) a current replica; empty once all caught up."""
    deadline = time.monotonic() + timeout
    while True:
        behind: dict[str, list[str]] = {}
        for name in STREAM_NAMES:
            info = await js.stream_info(name)
            assert info.cluster is not None
            lagging = [
                str(r.name) for r in info.cluster.replicas or [] if not r.current or r.offline
            ]
            if len(info.cluster.replicas or []) != MEMBERS - 1:
                lagging.append(f"{len(info.cluster.replicas or [])} replicas besides the leader")
            if lagging:
                behind[name] = lagging
        if not behind or time.monotonic() > deadline:
            return behind
        await asyncio.sleep(0.5)


async def test_every_stream_and_the_idempotency_bucket_have_a_replica_on_each_member(
    cluster: Cluster, system: System
) -> None:
    nc = await _admin(cluster)
    try:
        js = nc.jetstream()
        for name in STREAM_NAMES:
            info = await js.stream_info(name)
            assert info.config.num_replicas == MEMBERS, name
            assert info.cluster is not None and info.cluster.leader, name
        assert await _replicas_current(js, CAUGHT_UP_TIMEOUT) == {}
    finally:
        with quiet_disconnect():
            await nc.close()


def test_every_process_connects_to_the_cluster_as_its_own_user(
    cluster: Cluster, system: System
) -> None:
    users = {
        c.get("authorized_user")
        for c in cluster.connections()
        if not str(c.get("name", "")).startswith("cluster-test")
    }
    assert users == set(PROCESSES)


@pytest.mark.timeout(300)
async def test_kill_9_of_the_leading_member_under_load_loses_nothing_and_doubles_nothing(
    cluster: Cluster, system: System
) -> None:
    db = system.engine()
    nc = await _admin(cluster)
    try:
        js = nc.jetstream()
        first_event = await last_event_seq(js)
        counted_before = await model_requests(db)
        info = await js.stream_info(STREAMS["cmd"])
        assert info.cluster is not None and info.cluster.leader
        victim = cluster.member(info.cluster.leader)

        async def fault() -> None:
            await asyncio.to_thread(cluster.kill, victim)
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(cluster.start, victim)

        load = Load(system.gateway_url, system.api_key, "cluster")
        await load.run(fault)
        await settle(js, db)
        figures = await account(
            load, js, db, first_event=first_event, model_requests_before=counted_before
        )
        print(figures.line(), flush=True)
        assert figures.problems == [], figures.line()
        assert figures.tasks_completed == figures.tasks > 0
        assert await _replicas_current(js, CAUGHT_UP_TIMEOUT) == {}, f"{victim.name} behind"
    finally:
        with quiet_disconnect():
            await nc.close()
        await db.dispose()


def test_the_processes_export_consumer_lag_saga_and_model_metrics(system: System) -> None:
    """Scraped after the load: the gauges read from the server and the model counters."""
    assert system.running is not None
    ports = set(re.findall(r"http://127\.0\.0\.1:(\d+)/healthz", system.running.out.text))
    assert len(ports) == len(PROCESSES) - 2, (
        "every process but the gateway and the console (whose row is its page) has a health port"
    )
    scraped = ""
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            scraped += response.read().decode()
    assert 'soma_consumer_pending_messages{durable="policy",stream="SOMA_CMD"}' in scraped
    assert 'soma_consumer_redelivered_messages{durable="sagas-events",stream="SOMA_EVT"}' in scraped
    assert re.search(r'soma_model_tokens_total\{direction="output",model="soma-local-dev"', scraped)
    assert "# TYPE soma_saga_instances gauge" in scraped
