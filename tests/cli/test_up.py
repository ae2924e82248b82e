"""`soma up` from a clean data folder: embedded NATS, migrations, supervised processes.

One system runs for the module (starting one costs seconds); the last test stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bus.connection import connect
from bus.request import Requester
from schemas.policy import PolicyEvaluate
from soma.terminal import quiet_disconnect
from tests.cli.conftest import Running, Soma, clean_env, pid_alive, start_soma
from tests.servers import free_port, nats_server

PROCESSES = "policy=tests.cli.permissive_policy:build,ghost=tests.cli.no_such_module:build"


@dataclass
class System:
    running: Running
    data: Path
    taken_port: int
    url: str
    config: Path  # the user's config folder (XDG_CONFIG_HOME) this `soma up` records itself in
    stopped_at: int | None = None  # the output line where the SIGINT was sent

    def pids(self) -> set[int]:
        text = self.running.out.text
        return {int(p) for p in re.findall(r"(?:started|restarted) \w+ \(pid (\d+)\)", text)}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data = tmp_path_factory.mktemp("up") / "data"
    config = tmp_path_factory.mktemp("config")
    with socket.socket() as holder:  # someone else holds the port NATS would prefer
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        env = clean_env(
            SOMA_DATA_DIR=str(data),
            SOMA_HTTP_PORT=str(free_port()),
            SOMA_NATS_PORT=str(taken),
            SOMA_PROCESSES=PROCESSES,
            XDG_CONFIG_HOME=str(config),
        )
        running = start_soma("up", env=env)
        try:
            running.out.wait_for(r"policy ready", timeout=60)
            url = running.out.wait_for(r"NATS: embedded nats-server \(pid \d+\) on (\S+),")
            yield System(running, data, taken, url.group(1).rstrip(","), config)
        finally:
            if running.proc.poll() is None:
                running.proc.send_signal(signal.SIGINT)
                try:
                    running.finish(30)
                except Exception:
                    running.proc.kill()


async def _round_trip(url: str, text: str) -> str:
    nc = await connect(url, "up-test")
    requester = Requester(nc, nc.jetstream())
    await requester.start()
    try:
        _, reply = await requester.request(
            PolicyEvaluate(stage="prompt", text=text),
            tenant="acme",
            expect={"policy.evaluated"},
            timeout=20,
        )
        return str(reply.schema)
    finally:
        await requester.close()
        with quiet_disconnect():
            await nc.close()


def test_a_taken_nats_port_is_announced_and_a_free_one_used(system: System) -> None:
    assert f"port {system.taken_port} is taken" in system.running.out.text
    assert not system.url.endswith(f":{system.taken_port}")


def test_a_process_missing_from_the_build_is_skipped_with_the_reason(system: System) -> None:
    system.running.out.wait_for(
        r"skipped ghost: process 'ghost' is not available in this build: "
        r"ModuleNotFoundError: No module named 'tests\.cli\.no_such_module'"
    )


def test_the_data_folder_holds_the_database_the_store_and_the_nats_url(system: System) -> None:
    assert (system.data / "sagas.db").is_file()
    assert (system.data / "analytics.db").is_file()
    assert (system.data / "nats").is_dir()
    assert (system.data / "nats.url").read_text().strip() == system.url
    system.running.out.wait_for(r"database: .*/<area>\.db \(SQLite\) \(migrated\)")


def test_each_process_serves_health_at_the_url_in_the_table(system: System) -> None:
    found = system.running.out.wait_for(r"policy\s+│\s+\d+\s+│\s+(http://\S+/healthz)")
    response = httpx.get(found.group(1), timeout=5)
    assert response.status_code == 200
    assert response.json()["service"] == "policy"


async def test_a_command_goes_through_the_supervised_handler(system: System) -> None:
    assert await _round_trip(system.url, "hello") == "policy.evaluated"


async def test_a_crashed_process_is_restarted_and_handles_commands_again(
    system: System,
) -> None:
    out = system.running.out
    first = int(out.wait_for(r"started policy \(pid (\d+)\)").group(1))
    mark = len(out.lines)
    os.kill(first, signal.SIGKILL)
    await asyncio.to_thread(
        out.wait_for, r"policy was killed by SIGKILL .*restarting in 1s \(restart #1\)", 10, mark
    )
    second = int(
        (await asyncio.to_thread(out.wait_for, r"restarted policy \(pid (\d+)\)", 10, mark)).group(
            1
        )
    )
    assert second != first
    await asyncio.to_thread(out.wait_for, r"policy ready", 30, mark)
    assert await _round_trip(system.url, "after the crash") == "policy.evaluated"


async def test_a_process_whose_port_was_taken_while_it_was_down_comes_back_on_another(
    system: System,
) -> None:
    out = system.running.out
    port = int(out.wait_for(r"policy\s+│\s+\d+\s+│\s+http://[^:]+:(\d+)/healthz").group(1))
    pid = max(int(p) for p in re.findall(r"(?:started|restarted) policy \(pid (\d+)\)", out.text))
    mark = len(out.lines)
    with socket.socket() as holder:
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(out.wait_for, r"policy was killed by SIGKILL", 10, mark)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))  # taken before the restart
        holder.listen()
        moved = await asyncio.to_thread(
            out.wait_for, rf"policy: port {port} is taken; it listens on (\d+) now", 30, mark
        )
        await asyncio.to_thread(out.wait_for, r"policy ready", 30, mark)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{moved.group(1)}/healthz", timeout=5)
        assert response.status_code == 200
    assert await _round_trip(system.url, "on its new port") == "policy.evaluated"


async def test_a_crashed_embedded_nats_server_is_restarted_on_the_same_port(
    system: System,
) -> None:
    out = system.running.out
    first = int(out.wait_for(r"embedded nats-server \(pid (\d+)\)").group(1))
    mark = len(out.lines)
    os.kill(first, signal.SIGKILL)
    await asyncio.to_thread(out.wait_for, r"nats-server was killed by SIGKILL", 10, mark)
    await asyncio.to_thread(out.wait_for, r"restarted nats-server \(pid \d+\)", 10, mark)
    assert await _round_trip(system.url, "after nats came back") == "policy.evaluated"


def test_the_system_is_recorded_in_the_users_config_folder_for_them_only(
    system: System,
) -> None:
    system.running.out.wait_for(r"recorded in \S+system\.json")
    record = system.config / "soma" / "system.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700
    found = json.loads(record.read_text())
    assert found["nats_url"] == system.url
    assert found["data_dir"] == str(system.data.resolve())
    assert found["pid"] == system.running.proc.pid
    assert found["started_at"] and found["gateway_url"] is None  # no gateway in this selection


def test_a_command_in_any_folder_finds_the_system_by_its_record(
    system: System, tmp_path: Path
) -> None:
    system.running.out.wait_for(r"recorded in \S+system\.json")
    done = subprocess.run(
        [sys.executable, "-m", "soma.cli", "status", "-o", "json"],
        cwd=tmp_path,
        env=clean_env(XDG_CONFIG_HOME=str(system.config)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert str(system.config / "soma" / "system.json") in found["system"]["from"]
    assert found["system"]["soma_up_pid"] == system.running.proc.pid
    assert found["nats"]["url"] == system.url
    assert found["data_dir"] == str(system.data.resolve())
    assert found["processes"]["policy"]["state"] == "consuming"
    assert not (tmp_path / ".soma").exists()


async def test_a_system_named_in_the_environment_wins_over_the_record(
    system: System, tmp_path: Path
) -> None:
    with nats_server() as other:
        soma = Soma(clean_env(NATS_URL=other.url, XDG_CONFIG_HOME=str(system.config)))
        result = await soma("streams", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["stream_count"] == 0  # not the recorded system's three


def _stop(system: System) -> int:
    """SIGINT once (the tests below read what the stop did); the exit code."""
    if system.stopped_at is None:
        system.stopped_at = len(system.running.out.lines)
        system.running.proc.send_signal(signal.SIGINT)
    return system.running.finish(30)


def test_sigint_stops_every_process_and_nats_and_exits_0(system: System) -> None:
    text = system.running.out.text
    nats_pids = {int(p) for p in re.findall(r"nats-server \(pid (\d+)\)", text)}
    pids = system.pids() | nats_pids
    assert _stop(system) == 0
    assert not [pid for pid in pids if pid_alive(pid)]
    assert "stopped nats-server" in system.running.out.text
    assert not (system.data / "nats.url").exists()


def test_a_clean_stop_logs_no_reconnect_warning_and_no_traceback(system: System) -> None:
    _stop(system)
    assert system.stopped_at is not None
    after = "\n".join(system.running.out.lines[system.stopped_at :])
    assert "stopped policy (exited with code 0)" in after
    assert "reconnecting" not in after
    assert "Traceback" not in after


def test_a_clean_stop_removes_the_record(system: System) -> None:
    _stop(system)
    assert not (system.config / "soma" / "system.json").exists()


def test_a_gateway_port_in_use_stops_up_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = clean_env(SOMA_DATA_DIR=str(tmp_path), SOMA_HTTP_PORT=str(port))
        running = start_soma("up", env=env)
        code = running.finish(30)
    assert code == 1
    assert f"port {port}" in running.out.text and "SOMA_HTTP_PORT" in running.out.text
    assert "nats-server" not in running.out.text
    assert not (tmp_path / "nats").exists()


def test_an_unreachable_nats_url_is_one_clear_error(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    env = clean_env(
        SOMA_DATA_DIR=str(tmp_path),
        SOMA_HTTP_PORT=str(free_port()),
        NATS_URL=url,
        SOMA_PROCESSES="policy=tests.cli.permissive_policy:build",
    )
    running = start_soma("up", env=env)
    assert running.finish(30) == 1
    assert f"cannot reach NATS at {url}" in running.out.text
    assert "Traceback" not in running.out.text
    assert "started" not in running.out.text
