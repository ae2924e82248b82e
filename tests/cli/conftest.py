"""The `soma` command against real nats-servers: a fresh one per test, streams provisioned.

Commands run in-process through Typer's runner (in a worker thread, since each runs its own
event loop) or, where the behaviour is about processes and signals, as real subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from typer.testing import CliRunner

from bus.connection import connect
from bus.service import Connected
from bus.streams import provision
from kernel.settings import Settings
from soma.terminal import quiet_disconnect
from tests.servers import NatsServer, nats_server

ROOT = Path(__file__).resolve().parents[2]
# Variables a developer's shell may carry that would point a test at the wrong services.
_OUTSIDE = (
    "NATS_URL",
    "DATABASE_URL",
    "SOMA_PROCESSES",
    "SOMA_HTTP_PORT",
    "SOMA_DATA_DIR",
    "SOMA_NATS_PORT",
    "SOMA_HEALTH_PORT",
    "SOMA_SUPERVISOR_PID",
    "VISUAL",
    "EDITOR",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OUTSIDE}
    env.update({"PYTHONPATH": str(ROOT), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@pytest.fixture
def fresh_nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture
def env(fresh_nats: NatsServer, tmp_path: Path) -> dict[str, str]:
    return clean_env(NATS_URL=fresh_nats.url, SOMA_DATA_DIR=str(tmp_path / "data"))


@pytest.fixture
async def bus(fresh_nats: NatsServer, tmp_path: Path) -> AsyncIterator[Connected]:
    nc = await connect(fresh_nats.url, "cli-test")
    js = nc.jetstream()
    await provision(js, Settings(NATS_URL=fresh_nats.url, SOMA_DATA_DIR=tmp_path))
    yield Connected(nc, js)
    with quiet_disconnect():
        await nc.close()


@pytest.fixture
def js(bus: Connected) -> JetStreamContext:
    return bus.js


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


class Soma:
    """``soma`` in-process: ``await soma("streams", "--json")``."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    async def __call__(self, *args: str, stdin: str | None = None) -> Result:
        from soma.cli import app

        def invoke() -> Result:
            runner = CliRunner()
            env: dict[str, str | None] = {k: None for k in _OUTSIDE}
            env.update(self.env)
            result = runner.invoke(app, list(args), env=env, input=stdin)
            if result.exception and not isinstance(result.exception, SystemExit):
                raise result.exception
            return Result(result.exit_code, result.stdout, result.stderr)

        return await asyncio.to_thread(invoke)


@pytest.fixture
def soma(env: dict[str, str]) -> Soma:
    return Soma(env)


@dataclass
class Output:
    """Lines a subprocess writes, collected by a thread so a test can wait for one."""

    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def feed(self, stream) -> None:  # type: ignore[no-untyped-def]
        for raw in iter(stream.readline, ""):
            with self.changed:
                self.lines.append(raw.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines[start:]:
                    found = regex.search(line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout}s; output:\n"
                        + "\n".join(self.lines)
                    )
                self.changed.wait(left)

    @property
    def text(self) -> str:
        with self.changed:
            return "\n".join(self.lines)


@dataclass
class Running:
    proc: subprocess.Popen[str]
    out: Output
    readers: list[threading.Thread]

    def finish(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(5)
        return code


def start_soma(*args: str, env: dict[str, str]) -> Running:
    """``python -m soma.cli ...`` as a real process; stdout and stderr merged into ``out``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "soma.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Output()
    reader = threading.Thread(target=out.feed, args=(proc.stdout,), daemon=True)
    reader.start()
    return Running(proc, out, [reader])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is not running.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
