"""``soma up``: the whole system in one terminal, every part in its own OS process.

Each part runs exactly as it would deployed — ``python -m soma.cli run <name>`` — so a crash or a
blocking call in one handler cannot stall another, and what works under ``up`` works in a
container. The supervisor owns the order: NATS first (embedded unless ``NATS_URL``), streams and
migrations next, then the processes; on Ctrl-C or SIGTERM it stops them in the reverse order —
the gateway (which drains the requests in flight), the saga runner, the handlers — then NATS.
A second Ctrl-C kills whatever is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import IO
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kernel.logs import redact
from kernel.processes import Process, ProcessUnavailable, UnknownProcess, load, parse_spec
from kernel.settings import Settings
from soma import embedded, system

STOP_TIMEOUT = 10.0
DRAIN_TIMEOUT = 30.0  # the gateway's default SOMA_DRAIN_TIMEOUT
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0  # a process that ran this long starts its backoff afresh
TICK = 0.2
EXIT_UNAVAILABLE = 3  # `soma run` exit code for a process this build cannot import
_PALETTE = ("cyan", "green", "yellow", "magenta", "blue", "bright_cyan", "bright_green", "red")


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


@dataclass
class Child:
    process: Process
    port: int  # the health port; for the gateway, its HTTP port
    colour: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready: bool = False
    restarts: int = 0
    quick_failures: int = 0
    restart_at: float | None = None
    given_up: bool = False
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.process.name

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    settings: Settings
    spec: str | None = None
    console: Console = field(default_factory=Console)
    stop_timeout: float = STOP_TIMEOUT
    children: list[Child] = field(default_factory=list)
    nats: embedded.EmbeddedNats | None = None
    nats_url: str = ""
    stopping: bool = False
    hurry: bool = False
    stop_reason: str = ""
    _print_lock: threading.Lock = field(default_factory=threading.Lock)
    _nats_failures: int = 0
    _recorded: bool = False
    _nats_restart_at: float | None = None

    # -- output -----------------------------------------------------------------------------

    def say(self, message: str | Text, style: str = "") -> None:
        # What the operator sees may name URLs with credentials (NATS_URL): never the secrets.
        message = redact(message) if isinstance(message, str) else message
        with self._print_lock:
            self.console.print(message, style=style, soft_wrap=True, highlight=False)

    def error(self, message: str) -> None:
        self.say(Text.assemble(("error: ", "bold red"), message))

    # -- signals ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            self.hurry = True
            return
        self.stopping = True
        self.stop_reason = signal.Signals(signum).name

    # -- the whole run ------------------------------------------------------------------------

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            code = self._start()
            if code == 0:
                while not self.stopping:
                    self._tick()
                    time.sleep(TICK)
            return code
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self) -> int:
        settings = self.settings
        try:
            selected = parse_spec(self.spec)
        except UnknownProcess as exc:
            self.error(f"{exc} (from SOMA_PROCESSES / --processes)")
            return 2
        host = probe_host(settings.http_host)
        if "gateway" in selected and not embedded.port_free(settings.http_port, settings.http_host):
            self.error(
                f"port {settings.http_port} on {settings.http_host} is already in use, and the "
                "gateway needs it (SOMA_HTTP_PORT). Stop whatever listens there, or choose "
                f"another port: SOMA_HTTP_PORT={settings.http_port + 10} soma up"
            )
            return 1

        available = self._importable(selected)
        if not available:
            self.error(
                "none of the selected processes is available in this build; "
                "see the reasons above (install the project with `pip install -e .`)"
            )
            return 1
        if self.stopping:
            return 0

        if not self._start_nats():
            return 1
        if self.stopping or not self._prepare_bus():
            return 0 if self.stopping else 1
        if self.stopping or not self._migrate():
            return 0 if self.stopping else 1
        if self.stopping:
            return 0

        self._assign(available, host)
        for child in self.children:
            self._spawn(child)
        self._print_table(host)
        self._record(host)
        return 0

    # -- steps --------------------------------------------------------------------------------

    def _importable(self, selected: dict[str, Process]) -> list[Process]:
        available = []
        with self.console.status("checking which processes this build has…"):
            for process in selected.values():
                try:
                    load(process)
                except ProcessUnavailable as exc:
                    self.say(Text.assemble(("skipped ", "yellow"), f"{process.name}: {exc}"))
                    continue
                available.append(process)
        return available

    def _start_nats(self) -> bool:
        settings = self.settings
        if settings.nats_url:
            self.nats_url = settings.nats_url
            self.say(f"NATS: using {self.nats_url} (NATS_URL)")
            return True
        wanted = embedded.preferred_port()
        port = wanted
        if not embedded.port_free(wanted):
            port = embedded.free_port()
            self.say(
                Text.assemble(
                    ("note: ", "yellow"),
                    f"port {wanted} is taken (another NATS server?); the embedded nats-server "
                    f"uses port {port} instead. Set NATS_URL to use the server on {wanted}.",
                )
            )
        try:
            with self.console.status(f"starting nats-server on port {port}…"):
                self.nats = embedded.start(settings.data_dir, port)
        except embedded.EmbeddedNatsError as exc:
            self.error(str(exc))
            return False
        self.nats_url = self.nats.url
        embedded.record_url(settings, self.nats_url)
        self.say(
            f"NATS: embedded nats-server (pid {self.nats.pid}) on {self.nats_url}, "
            f"JetStream store {self.nats.store}, log {self.nats.log}"
        )
        return True

    def _prepare_bus(self) -> bool:
        """Connect once and create the streams, so no process races another to do it."""
        from bus.connection import connect
        from bus.errors import BusUnavailable
        from bus.streams import provision
        from soma.terminal import quiet_disconnect

        settings = self.settings.model_copy(update={"nats_url": self.nats_url})

        async def prepare() -> None:
            nc = await connect(self.nats_url, "soma-up")
            try:
                await provision(nc.jetstream(), settings)
            finally:
                with quiet_disconnect():
                    await nc.close()

        try:
            with self.console.status("creating streams…"):
                asyncio.run(prepare())
        except BusUnavailable as exc:
            self.error(str(exc))
            return False
        except Exception as exc:
            self.error(f"could not create the streams on {self.nats_url}: {exc}")
            return False
        self.say("streams: SOMA_CMD, SOMA_EVT, SOMA_DLQ ready")
        return True

    def _migrate(self) -> bool:
        from kernel.db import migrate_all

        url = self.settings.resolved_database_url("sagas")
        shown = (
            safe_url(url)
            if self.settings.database_url
            else f"{self.settings.data_dir.resolve()}/<area>.db (SQLite)"
        )
        try:
            with self.console.status(f"migrating {shown}…"):
                asyncio.run(migrate_all(self.settings.resolved_database_url))
        except Exception as exc:
            self.error(
                f"migrations failed on {shown}: {type(exc).__name__}: {exc}. "
                "Check DATABASE_URL (unset, a SQLite file under SOMA_DATA_DIR is used)."
            )
            return False
        self.say(f"database: {shown} (migrated)")
        self._bootstrap()
        return True

    def _bootstrap(self) -> None:
        """On a fresh store: the default tenant, an admin, and the one time its key is shown."""
        from soma.cli_keys import bootstrap_credentials

        try:
            key = bootstrap_credentials(self.settings)
        except Exception as exc:  # identity is optional in a build; say so and go on
            self.say(Text.assemble(("no bootstrap credential: ", "yellow"), str(exc)))
            return
        if key is None:
            self.say("credentials: existing store; `soma keys create --role admin` makes a new key")
            return
        self.say(
            Text.assemble(
                ("first admin API key (shown once, keep it): ", "bold green"),
                key,
                "\n  send it as `Authorization: Bearer <key>`; `soma token --key <key>` "
                "gives a JWT, `soma keys create` more keys",
            )
        )

    def _assign(self, processes: list[Process], host: str) -> None:
        port = self.settings.http_port + 1
        for i, process in enumerate(processes):
            if process.name == "gateway":
                child_port = self.settings.http_port
            else:
                while port == self.settings.http_port or not embedded.port_free(port, host):
                    port += 1
                child_port = port
                port += 1
            self.children.append(Child(process, child_port, _PALETTE[i % len(_PALETTE)]))

    def _spawn(self, child: Child) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not _PASSWORD_VARIABLE.fullmatch(k)},
            "NATS_URL": process_nats_url(self.nats_url, child.name, os.environ),
            "SOMA_HEALTH_PORT": str(child.port),
            # Absolute, so a process never looks for its data anywhere but where `up` put it.
            "SOMA_DATA_DIR": str(self.settings.data_dir.resolve()),
            "SOMA_SUPERVISOR_PID": str(os.getpid()),
            "PYTHONUNBUFFERED": "1",
        }
        if self.spec:
            env["SOMA_PROCESSES"] = self.spec
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "soma.cli", "run", child.name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only the supervisor, which stops us in order
        )
        child.started = time.monotonic()
        child.ready = False
        child.restart_at = None
        assert child.proc.stdout is not None
        reader = threading.Thread(target=self._relay, args=(child, child.proc.stdout), daemon=True)
        reader.start()
        child.readers.append(reader)
        verb = "restarted" if child.restarts else "started"
        self.say(f"{verb} {child.name} (pid {child.proc.pid})")

    def _relay(self, child: Child, stream: IO[bytes]) -> None:
        prefix = Text(f"{child.name:>9} │ ", style=child.colour)
        for raw in iter(stream.readline, b""):
            line = Text.from_ansi(raw.decode(errors="replace").rstrip("\n"))
            self.say(prefix + line)
        stream.close()

    def _print_table(self, host: str) -> None:
        table = Table(title="soma up", title_justify="left", expand=False)
        table.add_column("process")
        table.add_column("pid", justify="right")
        table.add_column("health / URL")
        for child in self.children:
            pid = str(child.proc.pid) if child.proc else "-"
            where = {
                "gateway": f"http://{host}:{child.port}",
                "console": f"http://{host}:{child.port}/console/",
            }.get(child.name, f"http://{host}:{child.port}/healthz")
            table.add_row(child.name, pid, where)
        with self._print_lock:
            self.console.print(table)
        gateway = next((c for c in self.children if c.name == "gateway"), None)
        if gateway:
            self.say(f"gateway: http://{host}:{gateway.port}", style="bold")
        console = next((c for c in self.children if c.name == "console"), None)
        if console:
            self.say(f"console: http://{host}:{console.port}/console/", style="bold")
        self.say(f"NATS: {self.nats_url}")
        self.say("Ctrl-C stops everything.", style="dim")

    def _record(self, host: str) -> None:
        """Tell commands in other shells where this system runs (``soma.system``).

        The URL is the one the command line should use: the ``operator`` user's when
        ``NATS_OPERATOR_PASSWORD`` is set (a server enforcing nats-accounts.conf), else the one
        this supervisor connects with.
        """
        ports = {child.name: child.port for child in self.children}
        path = system.record_path()
        before = system.read(path)
        if before is not None and before.pid != os.getpid() and before.alive():
            self.say(
                Text.assemble(
                    ("note: ", "yellow"),
                    f"another `soma up` (pid {before.pid}, data {before.data_dir}) was recorded "
                    f"in {path}; commands without NATS_URL or SOMA_DATA_DIR now reach this one",
                )
            )
        record = system.Record(
            nats_url=process_nats_url(self.nats_url, "operator", os.environ),
            data_dir=str(self.settings.data_dir.resolve()),
            database_url=self.settings.database_url,
            gateway_url=f"http://{host}:{ports['gateway']}" if "gateway" in ports else None,
            console_url=f"http://{host}:{ports['console']}/console/"
            if "console" in ports
            else None,
            pid=os.getpid(),
            started_at=system.now(),
        )
        try:
            system.write(record, path)
        except OSError as exc:
            self.say(
                Text.assemble(
                    ("note: ", "yellow"),
                    f"could not record this system in {path} ({exc.strerror}); other commands "
                    "need NATS_URL and SOMA_DATA_DIR to find it",
                )
            )
            return
        self._recorded = True
        self.say(f"recorded in {path}: `soma status` and other commands in any folder find it")

    # -- supervision --------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        host = probe_host(self.settings.http_host)
        self._watch_nats(now)
        for child in self.children:
            if child.given_up:
                continue
            if child.proc is None:
                if child.restart_at is not None and now >= child.restart_at:
                    self._move_if_taken(child, host)
                    self._spawn(child)
                continue
            code = child.proc.poll()
            if code is None:
                if not child.ready and embedded.accepts(child.port, host):
                    child.ready = True
                    self.say(f"{child.name} ready ({now - child.started:.1f}s)", style="green")
                continue
            self._crashed(child, code, now)

    def _move_if_taken(self, child: Child, host: str) -> None:
        """Give a restarting child another port if its own was taken meanwhile (by an outgoing
        connection's ephemeral port, say); the gateway keeps ``SOMA_HTTP_PORT``."""
        if child.name == "gateway" or embedded.port_free(child.port, host):
            return
        taken, child.port = child.port, embedded.free_port(host)
        self.say(f"{child.name}: port {taken} is taken; it listens on {child.port} now")
        if child.name == "console" and self._recorded:
            self._record(host)  # the recorded console URL names the port

    def _crashed(self, child: Child, code: int, now: float) -> None:
        ran = now - child.started
        child.proc = None
        child.ready = False
        if code == EXIT_UNAVAILABLE:
            child.given_up = True
            self.say(
                Text.assemble(
                    ("not restarting ", "yellow"),
                    f"{child.name}: it is not available in this build (see its output above)",
                )
            )
            return
        if ran >= STABLE_AFTER:
            child.quick_failures = 0
        delay = min(BACKOFF_INITIAL * 2**child.quick_failures, BACKOFF_MAX)
        child.quick_failures += 1
        child.restarts += 1
        child.restart_at = now + delay
        self.say(
            f"{child.name} {_exit_reason(code)} after {ran:.1f}s; "
            f"restarting in {delay:.0f}s (restart #{child.restarts})",
            style="yellow",
        )

    def _watch_nats(self, now: float) -> None:
        server = self.nats
        if server is None:
            return
        if server.alive():
            return
        if self._nats_restart_at is None:
            delay = min(BACKOFF_INITIAL * 2**self._nats_failures, BACKOFF_MAX)
            self._nats_failures += 1
            self._nats_restart_at = now + delay
            self.say(
                f"nats-server {_exit_reason(server.proc.returncode)}; restarting it on "
                f"port {server.port} in {delay:.0f}s. Last log lines:\n{server.log_tail(5)}",
                style="yellow",
            )
            return
        if now < self._nats_restart_at:
            return
        self._nats_restart_at = None
        try:
            self.nats = embedded.start(self.settings.data_dir, server.port)
            self.say(f"restarted nats-server (pid {self.nats.pid})")
        except embedded.EmbeddedNatsError as exc:
            self.error(str(exc))

    # -- stopping -----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop in the reverse of the order work flows: the gateway first, so it refuses new
        requests and finishes those in flight while the saga runner and the handlers that
        answer them still run; then the saga runner; then the handlers; NATS last."""
        if self.stop_reason:
            self.say(f"stopping ({self.stop_reason})…", style="bold")
        for group, timeout, note in self._stop_order():
            self._stop_group(group, timeout, note)
        for child in self.children:
            for reader in child.readers:
                reader.join(2)
        if self.nats is not None:
            code = self.nats.stop(timeout=1 if self.hurry else self.stop_timeout)
            embedded.forget_url(self.settings)
            self.say(f"stopped nats-server ({_exit_reason(code or 0)})")
        if self._recorded:
            system.remove(os.getpid())
        if self.stop_reason:
            self.say("stopped", style="bold")

    def _stop_order(self) -> list[tuple[list[Child], float, str]]:
        running = [c for c in self.children if c.alive()]
        gateway = [c for c in running if c.name == "gateway"]
        sagas = [c for c in running if c.name == "sagas"]
        handlers = [c for c in reversed(running) if c not in gateway and c not in sagas]
        drain = self._drain_timeout()
        return [
            (group, timeout, note)
            for group, timeout, note in (
                (
                    gateway,
                    drain + self.stop_timeout,
                    f" (refusing new requests, finishing those in flight for up to {drain:.0f}s)",
                ),
                (sagas, self.stop_timeout, ""),
                (handlers, self.stop_timeout, ""),
            )
            if group
        ]

    def _drain_timeout(self) -> float:
        """How long the gateway lets requests in flight finish (``SOMA_DRAIN_TIMEOUT``)."""
        try:
            from gateway.config import GatewayConfig

            return float(GatewayConfig().drain_timeout)
        except Exception:  # no gateway in this build, or a malformed value it reports itself
            return DRAIN_TIMEOUT

    def _stop_group(self, group: list[Child], timeout: float, note: str) -> None:
        if not self.hurry:
            names = ", ".join(child.name for child in group)
            self.say(f"stopping {names}{note}…")
            for child in group:
                assert child.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        pending = list(group)
        while pending and time.monotonic() < deadline and not self.hurry:
            for child in list(pending):
                assert child.proc is not None
                code = child.proc.poll()
                if code is not None:
                    pending.remove(child)
                    self.say(f"stopped {child.name} ({_exit_reason(code)})")
            time.sleep(0.05)
        for child in pending:
            assert child.proc is not None
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            child.proc.wait(5)
            why = "on a second signal" if self.hurry else f"within {timeout:.0f}s"
            self.say(f"killed {child.name}: it did not stop {why}", style="yellow")


_PASSWORD_VARIABLE = re.compile(r"NATS_[A-Z0-9_]+_PASSWORD")


def process_nats_url(url: str, name: str, environ: Mapping[str, str]) -> str:
    """``url`` with the process's own NATS user when ``NATS_<NAME>_PASSWORD`` is set.

    Against a server that enforces nats-accounts.conf every process must connect as its own
    user, with the permissions of that user alone; the passwords are the ones the server itself
    reads (``NATS_<USER>_PASSWORD``), and no child is given any password but its own. Without
    that variable the process connects as ``url`` says (the embedded server has no users).
    """
    password = environ.get(f"NATS_{name.upper().replace('-', '_')}_PASSWORD")
    if not password:
        return url
    servers = []
    for server in url.split(","):
        server = server.strip()
        scheme, _, rest = server.rpartition("://")
        host = urlsplit(f"nats://{rest}").netloc.rpartition("@")[2]
        servers.append(f"{scheme or 'nats'}://{name}:{password}@{host}")
    return ",".join(servers)


def safe_url(url: str) -> str:
    """A database URL fit to print: the password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def bind_to_supervisor() -> bool:
    """Die with ``soma up`` even if it is killed with SIGKILL and cannot stop us itself.

    Returns False when the supervisor is already gone (the caller should exit).
    """
    raw = os.environ.get("SOMA_SUPERVISOR_PID", "")
    if not raw.isdigit() or not sys.platform.startswith("linux"):
        return True
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    return os.getppid() == int(raw)


def up(settings: Settings, spec: str | None, console: Console | None = None) -> int:
    return Supervisor(settings, spec, console or Console(highlight=False)).run()
