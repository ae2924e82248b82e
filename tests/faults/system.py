"""The whole system under ``soma up``, as an operator runs it, with a hand that kills parts of it.

``soma up`` is the supervisor: a process killed with SIGKILL is restarted by it, exactly as in
production. For a whole-system crash every process, the embedded nats-server and the supervisor
itself are killed with SIGKILL, and a new ``soma up`` starts on the same data folder (JetStream
store, SQLite files, local Qdrant) — the state a power cut leaves behind.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kernel.db import AREAS, make_engine
from tests.cli.conftest import Running, clean_env, pid_alive, start_soma
from tests.servers import free_port

PROCESSES = ("identity", "policy", "memory", "slm", "tools", "analytics", "sagas", "gateway")
START_TIMEOUT = 120.0
RESTART_TIMEOUT = 90.0


def fault_env(data: Path, *, database_url: str | None, redis_url: str | None) -> dict[str, str]:
    """The environment of every run: fixed ports, so a restarted system is found where it was.

    ``SOMA_ACK_WAIT`` is short so that what a killed process held is redelivered within the
    suite's time budget; nothing the suite checks depends on its value, only how long it waits.
    Rate limits are off: the load is bounded by the suite itself.
    """
    extra = {
        "SOMA_DATA_DIR": str(data),
        "SOMA_HTTP_PORT": str(free_port()),
        "SOMA_NATS_PORT": str(free_port()),
        "SOMA_ACK_WAIT": "5",
        "SOMA_RATE_RPM": "0",
        "SOMA_RATE_TENANT_RPM": "0",
        "SOMA_RATE_TPM": "0",
        "SOMA_RATE_TENANT_TPM": "0",
        "SOMA_LOG_LEVEL": "WARNING",
    }
    env = clean_env(**extra)
    for name in ("REDIS_URL", "QDRANT_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(name, None)
    if database_url:
        env["DATABASE_URL"] = database_url
    if redis_url:
        env["REDIS_URL"] = redis_url
        env["SOMA_REDIS_PREFIX"] = f"soma:faults:{os.urandom(6).hex()}:"
    return env


@dataclass
class System:
    """One ``soma up`` (and its successors after a whole-system restart)."""

    env: dict[str, str]
    running: Running | None = None
    api_key: str = ""
    restarts: list[str] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SOMA_HTTP_PORT']}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.env['SOMA_NATS_PORT']}"

    def engine(self) -> AsyncEngine:
        """One engine over every area's tables: the PostgreSQL database, or each area's SQLite
        file of the embedded store attached to one connection (table names differ by area)."""
        url = self.env.get("DATABASE_URL")
        if url:
            return make_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
        data = Path(self.env["SOMA_DATA_DIR"]).resolve()
        # Plain deferred transactions: the ledger only reads, and must not hold write locks.
        engine = create_async_engine(f"sqlite+aiosqlite:///{data / 'sagas.db'}")

        @event.listens_for(engine.sync_engine, "connect")
        def _attach(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            for area in AREAS:
                if area != "sagas":
                    cur.execute(f"ATTACH DATABASE '{data / f'{area}.db'}' AS {area}")
            cur.close()

        return engine

    def _out(self) -> Running:
        assert self.running is not None, "the system is not running"
        return self.running

    def start(self) -> None:
        running = start_soma("up", env=self.env)
        self.running = running
        found = self.wait_for(
            r"first admin API key \(shown once, keep it\): (\S+)|credentials: existing store"
        )
        if found.group(1):
            self.api_key = found.group(1)
        for name in PROCESSES:
            self.wait_for(rf"^{name} ready \(")
        self.wait_gateway()

    def wait_for(
        self, pattern: str, timeout: float = START_TIMEOUT, start: int = 0
    ) -> re.Match[str]:
        """A line of ``soma up``'s output; fails at once, with the output, should it exit."""
        running = self._out()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return running.out.wait_for(pattern, 1.0, start)
            except AssertionError:
                code = running.proc.poll()
                if code is not None or time.monotonic() > deadline:
                    why = f"exited with {code}" if code is not None else f"not within {timeout}s"
                    raise AssertionError(
                        f"soma up {why} before printing {pattern!r}; its output:\n"
                        + running.out.text
                    ) from None

    def wait_gateway(self, timeout: float = RESTART_TIMEOUT) -> None:
        """Ready means answering: the gateway lists the models only once it reaches the bus."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = httpx.get(
                    f"{self.gateway_url}/v1/models",
                    headers={"Authorization": f"Bearer {self.api_key}"},
                    timeout=5,
                )
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not answer within {timeout}s")
            time.sleep(0.3)

    def pid(self, name: str) -> int:
        """The newest pid the supervisor reported for ``name`` (``nats-server`` included)."""
        text = self._out().out.text
        if name == "nats-server":
            pattern = r"(?:embedded nats-server|restarted nats-server) \(pid (\d+)\)"
        else:
            pattern = rf"(?:started|restarted) {name} \(pid (\d+)\)"
        found = re.findall(pattern, text)
        assert found, f"no pid reported for {name}"
        return int(found[-1])

    def kill(self, name: str) -> None:
        """SIGKILL one process; return once the supervisor has it back and ready."""
        mark = len(self._out().out.lines)
        os.kill(self.pid(name), signal.SIGKILL)
        self.wait_for(rf"{name} was killed by SIGKILL", RESTART_TIMEOUT, mark)
        self.wait_for(rf"restarted {name} \(pid \d+\)", RESTART_TIMEOUT, mark)
        self.wait_for(rf"^{name} ready \(", RESTART_TIMEOUT, mark)
        if name == "gateway":
            self.wait_gateway()
        self.restarts.append(name)

    def crash(self) -> None:
        """SIGKILL everything at once: the supervisor is frozen first so it restarts nothing."""
        running = self._out()
        supervisor = running.proc.pid
        victims = [self.pid(name) for name in (*PROCESSES, "nats-server")]
        os.kill(supervisor, signal.SIGSTOP)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.kill(supervisor, signal.SIGKILL)
        running.proc.wait(30)
        deadline = time.monotonic() + 30
        while any(pid_alive(pid) for pid in victims):
            assert time.monotonic() < deadline, "a killed process is still alive"
            time.sleep(0.05)
        for reader in running.readers:
            reader.join(5)

    def restart_all(self) -> None:
        self.crash()
        self.start()
        self.restarts.append("everything")

    def stop(self) -> None:
        running = self.running
        if running is None or running.proc.poll() is not None:
            return
        running.proc.send_signal(signal.SIGINT)
        try:
            running.finish(60)
        except Exception:
            self.crash()
