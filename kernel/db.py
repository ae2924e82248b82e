"""The SQL store of sagas and handlers: one metadata, migrations applied by Alembic per area.

Each area (``AREAS``: one Alembic branch each, its tables named with its prefix) names its
database through ``Settings.resolved_database_url(area)``: PostgreSQL (asyncpg) when
``DATABASE_URL`` says so, one database for all; otherwise a SQLite file per area under the data
folder, so that the saga runner's commits never queue behind analytics', identity's or memory's
on one SQLite write lock. One code path either way: an area opens its URL and migrates its
branch.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is written to the WAL but not
fsynced until the next checkpoint. A process killed with -9 loses nothing that committed (the
WAL is in the operating system's page cache and is replayed by the next opener); only a power
loss or kernel crash may lose the last transactions before a checkpoint, and the file stays
consistent. The project's promise is kill -9 of any process; a deployment that must survive
power loss without losing a commit runs PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec
from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Connection, Engine, MetaData, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

T = TypeVar("T")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

MIGRATIONS = Path(__file__).parent / "migrations"

# Every area with tables: its Alembic branch label, and the prefix its table names carry.
AREAS = {
    "identity": "identity_",
    "policy": "policy_",
    "memory": "memory_",
    "tools": "tools_",
    "analytics": "analytics_",
    "sagas": "saga_",
}

# The execution option of a read-only engine (``reader``).
READ_ONLY = "soma_read_only"

# The single SQLite file every area shared before each had its own.
LEGACY_FILE = "kernel.db"

_json_encoder = msgspec.json.Encoder()


def _json_text(value: object) -> str:
    return _json_encoder.encode(value).decode()


def _json_value(text: str | bytes) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:  # NaN or Infinity, which json.dumps wrote in older releases
        return json.loads(text)


# JSON columns through msgspec on every engine: the saga runner writes an instance's input and
# data at each commit, and the standard library's encoder took ten times as long.
JSON_CODEC: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": _json_value}


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **JSON_CODEC)
        _sqlite_writer_events(engine.sync_engine)
        return engine
    # A fixed pool: under load, tasks wait for a connection instead of opening (and closing)
    # overflow connections, which costs more than the statements themselves.
    pool = int(os.environ.get("SOMA_DB_POOL", "20"))
    return create_async_engine(url, pool_size=pool, max_overflow=0, pool_recycle=1800, **JSON_CODEC)


def _sqlite_writer_events(engine: Engine, busy_ms: int = 30_000) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.close()
        # Let BEGIN below take the write lock up front: concurrent writers then queue on
        # busy_timeout instead of failing when a read transaction tries to upgrade.
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
        # A reader (``reader(engine)``) must not take the write lock: in WAL mode it reads
        # a snapshot beside the writer, where it would queue on busy_timeout's sleeps.
        read = conn.get_execution_options().get(READ_ONLY)
        conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


# The synchronous engine on each SQLite file engine, made on first use (``in_transaction``).
_writers: weakref.WeakKeyDictionary[AsyncEngine, Engine] = weakref.WeakKeyDictionary()
# And the one for transactions run on the event loop (``on_loop``), which never waits for the
# file's write lock: SQLite's busy handler would sleep with the loop stopped.
_loop_writers: weakref.WeakKeyDictionary[AsyncEngine, Engine] = weakref.WeakKeyDictionary()


def _sqlite_file(engine: AsyncEngine) -> URL | None:
    """The synchronous driver's URL of ``engine``'s SQLite file; None for any other database
    (or an in-memory one, which a second engine would not share)."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    return engine.url.set(drivername="sqlite+pysqlite")


def _sync_writer(engine: AsyncEngine, *, on_loop: bool = False) -> Engine | None:
    made = _loop_writers if on_loop else _writers
    sync = made.get(engine)  # first: every hot-path transaction asks
    if sync is not None:
        return sync
    url = _sqlite_file(engine)
    if url is None:
        return None
    busy_ms = 0 if on_loop else 30_000
    sync = create_engine(url, connect_args={"timeout": busy_ms / 1000}, **JSON_CODEC)
    _sqlite_writer_events(sync, busy_ms)
    made[engine] = sync
    return sync


def _locked(exc: OperationalError) -> bool:
    """SQLite's answer when another connection holds the write lock: busy, or locked."""
    return isinstance(exc.orig, sqlite3.OperationalError) and "locked" in str(exc.orig)


def _run_in_transaction(sync: Engine, work: Callable[[Connection], T]) -> T:
    with sync.begin() as conn:
        return work(conn)


async def in_transaction(
    engine: AsyncEngine, work: Callable[[Connection], T], *, on_loop: bool = False
) -> T:
    """Run ``work`` on a synchronous connection in one transaction of ``engine``'s database;
    its result. For handlers that write several statements per transaction on a hot path.

    On a SQLite file the whole transaction runs on a synchronous pysqlite engine in one worker
    thread: one hand-off for the transaction, where aiosqlite makes one for every call of every
    statement (begin, execute, fetch, close, commit) and hands each result back through the
    event loop. A batch of fifteen statements cost about 12 ms of the process's CPU that way
    and costs a fraction of it this way (bench/gateway.py, analytics and the saga runner). On
    PostgreSQL ``work`` runs through ``AsyncConnection.run_sync`` on the async engine.

    ``on_loop`` is for a transaction of a few indexed statements that a reply waits for (the
    token charge): on a SQLite file it runs on the event loop's own thread, as a point read
    does, and only when another connection holds the file's write lock does it go to the
    worker thread to wait there. Two hand-offs between threads, each a wake-up the scheduler
    of a busy machine may delay, cost such a transaction more than its statements do.
    """
    if on_loop:
        quick = _sync_writer(engine, on_loop=True)
        if quick is not None:
            try:
                return _run_in_transaction(quick, work)
            except OperationalError as exc:
                if not _locked(exc):
                    raise
    sync = _sync_writer(engine)
    if sync is None:
        async with engine.begin() as conn:
            return await conn.run_sync(work)
    return await asyncio.to_thread(_run_in_transaction, sync, work)


def sqlite_cursor(conn: Connection) -> sqlite3.Cursor:
    """The sqlite3 cursor under one of ``in_transaction``'s connections, inside its transaction:
    for the few statements of a hot path, where SQLAlchemy's execution of each (a context, bind
    processing, a result) costs several times sqlite3's own work. Values go in as SQLAlchemy's
    SQLite types write them (ISO dates, ``sqlite_time`` stamps, 0 and 1), so its reads agree."""
    cursor: sqlite3.Cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    return cursor


def sqlite_time(at: datetime) -> str:
    """``at`` as SQLAlchemy's SQLite ``DateTime`` stores it, in UTC (a naive time is taken as
    UTC already): SQLAlchemy itself writes an aware time's wall clock, whatever its zone."""
    return (at.astimezone(UTC) if at.tzinfo else at).strftime("%Y-%m-%d %H:%M:%S.%f")


async def dispose(engine: AsyncEngine) -> None:
    """Close ``engine``'s connections, and those of its synchronous writers and of its driver
    pool (``driver``) if it has any."""
    for made in (_writers, _loop_writers):
        sync = made.pop(engine, None)
        if sync is not None:
            sync.dispose()
    pool = _drivers.pop(engine, None)
    if pool is not None:
        with contextlib.suppress(Exception):  # a pool that never opened has nothing to close
            await (await pool).close()
    await engine.dispose()


# asyncpg's own pool on each PostgreSQL engine, opened on first use (``driver``): the task that
# opens it, so that callers arriving while it opens wait for the one pool.
_drivers: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Task[asyncpg.Pool]] = (
    weakref.WeakKeyDictionary()
)
# The driver pool's connections: its statements take a fraction of a millisecond each, so a
# few connections serve a process's hot path, beside the engine's own pool.
DRIVER_POOL = 4


async def driver(engine: AsyncEngine) -> asyncpg.Pool | None:
    """``engine``'s PostgreSQL database through asyncpg's own pool, for the single statements a
    reply waits for (the token charge, a chat turn's row); None on any other database.

    Through SQLAlchemy a one-statement call costs about 0.6 ms of CPU, of which the statement's
    round trip through asyncpg is 0.1: the rest is checking a connection out of SQLAlchemy's
    pool and back (0.25 ms, with its events and resets) and building the statement's execution
    context. asyncpg's pool hands out a connection in microseconds and prepares each statement
    once per connection. Its statements are plain SQL with ``$1`` parameters, each its own
    transaction; anything of several statements stays with ``in_transaction``.
    """
    if engine.dialect.name != "postgresql":
        return None
    opening = _drivers.get(engine)
    if opening is None:
        opening = _drivers[engine] = asyncio.create_task(_open_driver(engine))
    try:
        return await asyncio.shield(opening)
    except Exception:
        if _drivers.get(engine) is opening:
            del _drivers[engine]  # the next caller tries again: the server may be back
        raise


class _StatementConnection(asyncpg.Connection):  # type: ignore[misc]
    """A driver pool's connection: given back without a reset query.

    asyncpg's pool resets each connection it is given back (advisory locks, cursors, LISTEN,
    session settings): one more round trip per statement, doubling its cost. The driver's
    statements change none of those; an open transaction is still rolled back by the pool.
    """

    def get_reset_query(self) -> str:
        return ""


async def _open_driver(engine: AsyncEngine) -> asyncpg.Pool:
    """A pool that connects as ``engine`` does: SQLAlchemy's asyncpg dialect turns the URL (host,
    credentials, its query: ``ssl``, a statement cache size …) into asyncpg's connect arguments."""
    _, params = engine.dialect.create_connect_args(engine.url)
    params.pop("prepared_statement_name_func", None)  # the dialect's own, not asyncpg's
    cache = params.pop("prepared_statement_cache_size", None)
    if cache is not None:
        params["statement_cache_size"] = int(cache)
    params.setdefault("timeout", 30)
    return await asyncpg.create_pool(
        min_size=1, max_size=DRIVER_POOL, connection_class=_StatementConnection, **params
    )


# The engines ``autocommit`` and ``reader`` give, made once per engine: each
# ``execution_options`` call builds an engine and registers its event listeners, about 0.1 ms
# of CPU, which a statement on a hot path (the token charge) paid every time.
_autocommit: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()
_readers: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` for single statements, each its own transaction: on PostgreSQL one round
    trip instead of three (BEGIN, the statement, COMMIT or ROLLBACK). SQLite's engine is
    returned as it is: its transactions are already begun by ``kernel.db``'s own events."""
    if engine.dialect.name != "postgresql":
        return engine
    made = _autocommit.get(engine)
    if made is None:
        made = _autocommit[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return made


def reader(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` for connections that only read: on SQLite their transactions begin deferred,
    so they neither wait for nor hold up the writer. On PostgreSQL each statement runs in its
    own implicit transaction (autocommit): a read is one round trip instead of three (BEGIN,
    the statement, ROLLBACK), and it reads what it would have read in a transaction, since
    READ COMMITTED takes a new snapshot for every statement anyway."""
    made = _readers.get(engine)
    if made is None:
        made = _readers[engine] = autocommit(engine).execution_options(**{READ_ONLY: True})
    return made


def point_reader(engine: AsyncEngine) -> Engine | None:
    """A synchronous engine on ``engine``'s SQLite file, for reads of one row by its key that
    a hot path awaits; None on any other database.

    aiosqlite runs each call of a statement (begin, execute, fetch, close, rollback) on its
    own thread and hands every result back through the event loop: a one-row read costs about
    1.5 ms that way, most of it thread hand-offs, against tens of microseconds in the calling
    thread. In WAL mode such a read takes a snapshot beside the writer and never waits for it,
    so it may run on the event loop. Only short reads by an index belong here (a row by its
    key, the few ids a timer pass finds due).
    """
    url = _sqlite_file(engine)
    if url is None:
        return None
    sync = create_engine(url, **JSON_CODEC)

    @event.listens_for(sync, "connect")
    def _read_only(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA query_only=ON")
        cur.execute("PRAGMA busy_timeout=1000")
        cur.close()

    return sync


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _upgrade_sync(url: str, area: str) -> None:
    command.upgrade(alembic_config(url), f"{area}@head")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, None for any other database (or an in-memory one)."""
    if not url.startswith("sqlite"):
        return None
    _, _, rest = url.partition(":///")
    path = rest.split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def split_legacy(path: Path, area: str) -> bool:
    """Give ``area`` its own file ``path`` from the old shared ``kernel.db`` beside it, if there is
    one and ``path`` does not exist yet: a copy (through SQLite's backup, so what is still in
    the old file's WAL comes along) keeping only the area's tables and migration version.
    True when it did. Safe for several processes at once: the copy is made under a private
    name and linked into place only if no other process got there first.
    """
    legacy = path.with_name(LEGACY_FILE)
    if path.exists() or not legacy.exists() or path.name == LEGACY_FILE:
        return False
    prefix = AREAS[area]
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    source = sqlite3.connect(legacy)
    target = sqlite3.connect(part)
    try:
        source.backup(target)
        names = [r[0] for r in target.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for name in names:
            if name != "alembic_version" and not name.startswith(prefix):
                target.execute(f'DROP TABLE "{name}"')
        if "alembic_version" in names:
            target.execute(
                "DELETE FROM alembic_version WHERE substr(version_num, 1, ?) != ?",
                (len(area) + 1, f"{area}_"),
            )
        target.commit()
        target.execute("VACUUM")
    finally:
        source.close()
        target.close()
    try:
        os.link(part, path)
    except FileExistsError:
        return False
    finally:
        part.unlink()
    return True


def _split_and_upgrade(url: str, area: str) -> None:
    path = sqlite_path(url)
    if path is not None and split_legacy(path, area):
        log.warning(
            "copied the %s tables of %s into %s; once every area has its own file the old "
            "file is no longer read and may be removed",
            area,
            path.with_name(LEGACY_FILE),
            path,
        )
    _upgrade_sync(url, area)


async def migrate(url: str, area: str) -> None:
    """Apply ``area``'s migrations to its database — safe to call on every start."""
    if area not in AREAS:
        raise ValueError(f"no such area: {area} (areas: {', '.join(AREAS)})")
    await asyncio.to_thread(_split_and_upgrade, url, area)


async def migrate_all(database_url: Callable[[str], str]) -> list[str]:
    """Migrate every area, each into the database ``database_url(area)`` names; the URLs."""
    urls = []
    for area in AREAS:
        url = database_url(area)
        await migrate(url, area)
        urls.append(url)
    return urls
