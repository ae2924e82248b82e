"""`soma up --with`: a service author's FastStream handler supervised beside the built-ins."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.authors.packages import ROOT, install_examples
from tests.cli.conftest import Running, clean_env, start_soma
from tests.servers import free_port


@dataclass
class Up:
    running: Running
    env: dict[str, str]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("up-with")
    site = install_examples(root)
    env = clean_env(
        SOMA_DATA_DIR=str(root / "data"),
        SOMA_HTTP_PORT=str(free_port()),
        SOMA_NATS_PORT=str(free_port()),
        PYTHONPATH=f"{ROOT}:{site}",
    )
    running = start_soma(
        "up",
        "--processes",
        "sagas",
        "--with",
        "shipping=shipping_handler.service:service",
        env=env,
    )
    try:
        running.out.wait_for(r"shipping ready", timeout=120)
        running.out.wait_for(r"sagas ready", timeout=120)
        url = running.out.wait_for(r"NATS: embedded nats-server \(pid \d+\) on (\S+),")
        yield Up(running, {**env, "NATS_URL": url.group(1).rstrip(",")})
    finally:
        if running.proc.poll() is None:
            running.proc.send_signal(signal.SIGINT)
            try:
                running.finish(30)
            except Exception:
                running.proc.kill()


def test_with_starts_the_added_process_beside_the_chosen_ones(up: Up) -> None:
    started = set(re.findall(r"started (\w+) \(pid \d+\)", up.running.out.text))
    assert started == {"sagas", "shipping"}


def test_a_saga_reaches_the_supervised_faststream_handler(up: Up) -> None:
    parcel = {"order_id": "o-9", "grams": 900, "country": "US"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "soma.cli",
            "saga",
            "start",
            "shipping_order",
            json.dumps(parcel),
            "--tenant",
            "acme",
            "--wait",
            "--timeout",
            "60",
        ],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["result"] == {"order_id": "o-9", "cents": 1450, "carrier": "parcelco"}
