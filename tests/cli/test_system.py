"""Which system a command works on when it is not `soma up`: named, recorded, or none at all.

The record a live `soma up` writes is tested with a real one in test_up.py; here, the cases
without one: nothing running, a record left by a `soma up` that no longer runs, and a system
named by options rather than variables.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from soma import system
from tests.cli.conftest import Soma, clean_env
from tests.servers import NatsServer

NOT_FOUND = "no running Soma system found: start one with `soma up`"


def _soma_in(folder: Path, *args: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``soma ARGS`` run in ``folder`` with nothing that names a system."""
    return subprocess.run(
        [sys.executable, "-m", "soma.cli", *args],
        cwd=folder,
        env=clean_env(XDG_CONFIG_HOME=str(config)),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "command", [("streams",), ("dlq", "ls"), ("keys", "ls"), ("migrate",), ("status",)]
)
def test_a_command_with_no_system_running_says_so_and_exits_1(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    done = _soma_in(tmp_path, *command, config=tmp_path / "config")
    assert done.returncode == 1, done.stdout
    assert NOT_FOUND in done.stderr
    assert "NATS_URL / SOMA_DATA_DIR" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_command_with_no_system_running_creates_no_database_where_it_is_run(
    tmp_path: Path,
) -> None:
    _soma_in(tmp_path, "keys", "ls", config=tmp_path / "config")
    _soma_in(tmp_path, "migrate", config=tmp_path / "config")
    assert not (tmp_path / ".soma").exists()


def test_a_record_whose_soma_up_no_longer_runs_is_recognised_as_stale(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    config = tmp_path / "config"
    system.write(
        system.Record(
            nats_url="nats://127.0.0.1:1",
            data_dir=str(tmp_path / "data"),
            database_url=None,
            gateway_url=None,
            console_url=None,
            pid=gone.pid,
            started_at="2026-01-01T00:00:00+00:00",
        ),
        config / "soma" / "system.json",
    )
    done = _soma_in(tmp_path, "streams", config=config)
    assert done.returncode == 1
    assert NOT_FOUND in done.stderr
    assert f"pid {gone.pid}" in done.stderr and "which no longer runs" in done.stderr


async def test_the_nats_url_option_names_the_system(
    fresh_nats: NatsServer, js: object, tmp_path: Path
) -> None:
    soma = Soma(clean_env(XDG_CONFIG_HOME=str(tmp_path / "config")))
    result = await soma("--nats-url", fresh_nats.url, "streams", "--json")
    assert result.exit_code == 0, result.stderr
    names = {stream["name"] for stream in json.loads(result.stdout)["streams"]}
    assert {"SOMA_CMD", "SOMA_EVT", "SOMA_DLQ"} <= names


async def test_a_data_folder_alone_does_not_reach_a_guessed_nats_server(tmp_path: Path) -> None:
    soma = Soma(clean_env(XDG_CONFIG_HOME=str(tmp_path / "config")))
    result = await soma("--data-dir", str(tmp_path / "data"), "streams")
    assert result.exit_code == 1
    assert "no NATS URL for the system in" in result.stderr
    assert "set NATS_URL" in result.stderr
