"""Which Soma system a command works on: the one it is told about, else the one `soma up` runs.

An operator types ``soma dlq ls`` in whatever folder their shell happens to be in. Guessing
there — ``./.soma`` and ``nats://127.0.0.1:4222`` — would read an empty database it has just
created, or someone else's server, and look like an answer. So a command works on:

1. the system named explicitly: ``NATS_URL``, ``SOMA_DATA_DIR`` or ``DATABASE_URL`` (the
   ``--nats-url`` and ``--data-dir`` options set the first two), as a deployment does;
2. else the system a live ``soma up`` of this user recorded in ``system.json`` in the user's
   config folder (``$XDG_CONFIG_HOME/soma``, default ``~/.config/soma``);
3. else nothing: ``NoSystem``, which the command reports, exiting 1.

The record holds the NATS URL with the credentials the command line should use and the database
URL, so it is written readable by its owner only (0600, in a 0700 folder). ``soma up`` removes
it when it stops; a record whose ``soma up`` no longer runs (killed, machine restarted) is stale
and ignored, and says so in the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from kernel.settings import Settings

RECORD_FILE = "system.json"
# What names a system explicitly: any one of these and the record is not consulted.
EXPLICIT = ("NATS_URL", "SOMA_DATA_DIR", "DATABASE_URL")
NOT_FOUND = (
    "no running Soma system found: start one with `soma up`, or set NATS_URL / SOMA_DATA_DIR "
    "(or --nats-url / --data-dir)"
)


class NoSystem(Exception):
    """Nothing says which system to work on; the message says how to name one."""


def config_dir() -> Path:
    """The user's config folder for soma (XDG: ``$XDG_CONFIG_HOME/soma``, ``~/.config/soma``)."""
    base = os.environ.get("XDG_CONFIG_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "soma"


def record_path() -> Path:
    return config_dir() / RECORD_FILE


@dataclass(frozen=True)
class Record:
    """What a running ``soma up`` wrote about itself."""

    nats_url: str
    data_dir: str
    database_url: str | None
    gateway_url: str | None
    console_url: str | None
    pid: int
    started_at: str

    def alive(self) -> bool:
        """Whether the ``soma up`` that wrote it still runs (not another program on its pid)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            command = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return True  # no /proc here: the pid answering is all we can tell
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
        return b"soma" in command

    def describe(self, path: Path) -> str:
        return f"{path} (written by `soma up`, pid {self.pid}, started {self.started_at})"


def write(record: Record, path: Path | None = None) -> Path:
    """Write ``record`` for commands in other shells; readable by this user only.

    Written to a temporary file in the same folder and renamed over the old one, so a reader
    sees the previous record or this one, never half of either.
    """
    path = path or record_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".system-", suffix=".json", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(record), f, indent=2)
            f.write("\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def read(path: Path | None = None) -> Record | None:
    """The record, live or stale; None when there is none or it cannot be read as one."""
    path = path or record_path()
    try:
        data = json.loads(path.read_text())
        return Record(
            nats_url=str(data["nats_url"]),
            data_dir=str(data["data_dir"]),
            database_url=data.get("database_url") or None,
            gateway_url=data.get("gateway_url") or None,
            console_url=data.get("console_url") or None,
            pid=int(data["pid"]),
            started_at=str(data.get("started_at", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove(pid: int, path: Path | None = None) -> None:
    """Remove the record if ``pid`` wrote it (another ``soma up`` may have written over it)."""
    path = path or record_path()
    found = read(path)
    if found is not None and found.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Located:
    """The settings of the system a command works on, and how they were found."""

    settings: Settings
    source: str
    record: Record | None = None  # the live `soma up` that runs this system, when one does
    named: tuple[str, ...] = ()  # the variables that named it; none when found by the record


def explicit(settings: Settings) -> list[str]:
    """The variables among ``EXPLICIT`` that name a system in these settings."""
    named = []
    if settings.nats_url:
        named.append("NATS_URL")
    if "data_dir" in settings.model_fields_set:
        named.append("SOMA_DATA_DIR")
    if settings.database_url:
        named.append("DATABASE_URL")
    return named


def locate(settings: Settings) -> Located:
    """The system for ``settings`` (from the environment): explicit, else a live ``soma up``."""
    path = record_path()
    record = read(path)
    live = record if record is not None and record.alive() else None
    named = explicit(settings)
    if named:
        same = live is not None and Path(live.data_dir) == settings.data_dir.resolve()
        return Located(settings, ", ".join(named), live if same else None, tuple(named))
    if live is None:
        stale = f" ({record.describe(path)}, which no longer runs)" if record is not None else ""
        raise NoSystem(NOT_FOUND + stale)
    update: dict[str, object] = {"nats_url": live.nats_url, "data_dir": Path(live.data_dir)}
    if live.database_url:
        update["database_url"] = live.database_url
    return Located(settings.model_copy(update=update), live.describe(path), live)


def nats_url(settings: Settings) -> tuple[str, str]:
    """The NATS URL of the system ``settings`` name and where it came from, or ``NoSystem``.

    A system named by its data folder alone is reached through the URL its ``soma up``
    recorded there (``nats.url``) or in the user's record; never a guessed default.
    """
    path = record_path()
    record = read(path)
    live = record if record is not None and record.alive() else None
    if settings.nats_url:
        if live and live.nats_url == settings.nats_url and not os.environ.get("NATS_URL"):
            return settings.nats_url, live.describe(path)
        return settings.nats_url, "NATS_URL"
    from soma.embedded import url_file

    beside = url_file(settings)
    with contextlib.suppress(OSError):
        recorded = beside.read_text().strip()
        if recorded:
            return recorded, f"{beside}, written by `soma up`"
    if live is not None and Path(live.data_dir) == settings.data_dir.resolve():
        return live.nats_url, live.describe(path)
    raise NoSystem(
        f"no NATS URL for the system in {settings.data_dir.resolve()}: NATS_URL is unset and no "
        f"running `soma up` recorded one for that folder; set NATS_URL, or start it with "
        "`soma up`"
    )
