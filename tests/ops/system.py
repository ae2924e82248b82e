"""The whole system as real OS processes, the gateway included, each writing its log to a file."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers import free_port, stop_processes

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ["identity", "policy", "memory", "slm", "tools", "sagas", "gateway"]


@dataclass
class Running:
    base_url: str
    api_key: str
    logs: Path  # one <process>.log a process, plus migrate.log and keys.log


def soma(env: dict[str, str], logs: Path, name: str, *args: str) -> str:
    """Run one ``soma`` command to its end; its stderr goes to ``<name>.log``, stdout returned."""
    with (logs / f"{name}.log").open("ab") as err:
        return subprocess.run(
            [sys.executable, "-m", "soma.cli", *args],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ).stdout.strip()


@contextmanager
def running(env: dict[str, str], logs: Path) -> Iterator[Running]:
    """Migrate, create an API key, start every process and wait until the gateway answers."""
    port = free_port()
    env = {**env, "PYTHONPATH": str(ROOT), "SOMA_HTTP_PORT": str(port)}
    env.update({"SOMA_RATE_RPM": "0", "SOMA_RATE_TPM": "0"})
    soma(env, logs, "migrate", "migrate")
    key = soma(
        env, logs, "keys", "keys", "create", "--tenant", "acme", "--user", "dev", "--role", "member"
    )
    procs = []
    for name in PROCESSES:
        with (logs / f"{name}.log").open("ab") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "soma.cli", "run", name],
                    env=env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                answer = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            dead = [n for n, p in zip(PROCESSES, procs, strict=True) if p.poll() is not None]
            assert not dead, f"{dead} stopped during startup; see {logs}"
            assert time.monotonic() < deadline, f"the gateway did not answer in 90 s; see {logs}"
            time.sleep(0.3)
        yield Running(base, key, logs)
    finally:
        stop_processes(procs)
