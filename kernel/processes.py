"""The processes `soma up` starts and `soma run` runs: a name and the dotted path that runs it.

A handler's factory ``build(settings)`` returns a ``bus.service.Service`` that the bus runtime
serves; the saga runner, the gateway and the console are async entry points that run until
stopped. Nothing is imported until it is asked for, so a build without one of them still runs
the rest — and says which one is missing and why.

``SOMA_PROCESSES`` chooses a subset (``policy,memory``) and can add a service author's own
handler under a name (``billing=acme.billing.service:build``); ``soma up --with`` (or
``SOMA_WITH``) adds such handlers to the selection without naming the rest (``with_extra``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kernel.settings import Settings


@dataclass(frozen=True)
class Process:
    name: str
    target: str  # "package.module:attribute"

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def attribute(self) -> str:
        return self.target.partition(":")[2]


# Start order: handlers first, then the saga runner (sends them commands), then the gateway;
# the console last, since it signs its users in through the gateway.
PROCESSES: dict[str, Process] = {
    p.name: p
    for p in (
        Process("identity", "handlers.identity.service:build"),
        Process("policy", "handlers.policy.service:build"),
        Process("memory", "handlers.memory.service:build"),
        Process("slm", "handlers.slm.service:build"),
        Process("tools", "handlers.tools.service:build"),
        Process("analytics", "handlers.analytics.service:build"),
        Process("sagas", "sagas.runner:main"),
        Process("gateway", "gateway.app:serve"),
        Process("console", "console.app:serve"),
    )
}

Entrypoint = Callable[[Settings], Any]


class UnknownProcess(LookupError):
    """A name that is neither in the process table nor a ``module:attribute`` path."""


class ProcessUnavailable(RuntimeError):
    """The process is known but its module does not import in this build."""


def _is_target(text: str) -> bool:
    module, sep, attribute = text.partition(":")
    return bool(sep and module and attribute.isidentifier())


def parse_spec(spec: str | None) -> dict[str, Process]:
    """The processes a ``SOMA_PROCESSES`` value selects, in start order; all when empty."""
    if not spec or not spec.strip():
        return dict(PROCESSES)
    chosen: dict[str, Process] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, target = item.partition("=")
        name, target = name.strip(), target.strip()
        if sep:
            if not _is_target(target):
                raise UnknownProcess(
                    f"SOMA_PROCESSES entry {item!r}: expected name=package.module:factory"
                )
            chosen[name] = Process(name, target)
        elif name in PROCESSES:
            chosen[name] = PROCESSES[name]
        else:
            raise UnknownProcess(unknown_message(name))
    return dict(sorted(chosen.items(), key=lambda kv: _start_rank(kv[0])))


def with_extra(spec: str | None, extra: str | None) -> str | None:
    """The ``SOMA_PROCESSES`` value for ``spec`` (all when empty) plus ``extra``'s processes.

    ``extra`` holds ``name=package.module:build`` entries (or built-in names), comma-separated:
    what ``soma up --with`` adds to the default set. The result goes to every child as its
    ``SOMA_PROCESSES``, so ``soma run <name>`` finds the added processes by name.
    """
    items = [part.strip() for part in (extra or "").split(",") if part.strip()]
    if not items:
        return spec
    for item in items:
        name, sep, target = item.partition("=")
        if sep and not _is_target(target.strip()):
            raise UnknownProcess(f"--with {item!r}: expected name=package.module:factory")
        if not sep and name.strip() not in PROCESSES:
            raise UnknownProcess(f"--with {item!r}: {unknown_message(name.strip())}")
    base = spec if spec and spec.strip() else ",".join(PROCESSES)
    return ",".join([base.strip().strip(","), *items])


def _start_rank(name: str) -> float:
    """Table order; a service author's own handlers start with the handlers, before sagas."""
    order = list(PROCESSES)
    return order.index(name) if name in order else order.index("sagas") - 0.5


def unknown_message(name: str) -> str:
    return (
        f"no process named {name!r}; known: {', '.join(PROCESSES)} "
        "(or give a handler factory as package.module:build)"
    )


def resolve(name: str, spec: str | None = None) -> Process:
    """A process by name: ``SOMA_PROCESSES`` entries first, then the table, then a dotted path."""
    if spec:
        custom = {
            n.strip(): Process(n.strip(), t.strip())
            for n, sep, t in (item.partition("=") for item in spec.split(","))
            if sep and _is_target(t.strip())
        }
        if name in custom:
            return custom[name]
    if name in PROCESSES:
        return PROCESSES[name]
    if _is_target(name):
        return Process(name.partition(":")[0].rsplit(".", 1)[-1], name)
    raise UnknownProcess(unknown_message(name))


def load(process: Process) -> Entrypoint:
    """Import the process's entry point; ``ProcessUnavailable`` says why it cannot be.

    As under ``python -m``, the working directory is importable, so a service author's package
    in the working tree runs without being installed.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(process.module)
    except Exception as exc:
        raise ProcessUnavailable(
            f"process {process.name!r} is not available in this build: {type(exc).__name__}: {exc}"
        ) from exc
    entry = getattr(module, process.attribute, None)
    if not callable(entry):
        raise ProcessUnavailable(
            f"process {process.name!r} is not available in this build: "
            f"{process.module} has no callable {process.attribute!r}"
        )
    return entry  # type: ignore[no-any-return]


async def until_stopped(work: Awaitable[Any]) -> Any:
    """Await an entry point; SIGINT/SIGTERM cancel it, and its orderly end is a clean return.

    The signals become event-loop callbacks rather than Python handlers that raise: uvicorn
    drains the gateway under its own handlers, then re-raises the signal it caught to whichever
    handler it found, and a handler that raised there would interrupt the loop mid-shutdown and
    print a traceback. This is the one place a process turns signals into its stop: handlers,
    the saga runner and the gateway all stop by cancellation.
    """
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            task.cancel()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop)
            installed.append(sig)
    try:
        return await task
    except asyncio.CancelledError:
        if not stopping:
            raise
        return None
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed, else asyncio's own (None).

    Every process spends most of its time in the loop's I/O: socket reads and writes to NATS,
    HTTP and the databases, timers and task switches, which uvloop does at a fraction of the
    cost. ``SOMA_EVENT_LOOP=asyncio`` keeps asyncio's loop, to tell a loop problem from ours.
    """
    if os.environ.get("SOMA_EVENT_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_blocking(process: Process, settings: Settings) -> None:
    """Run one process on the chosen event loop until it is stopped (``soma run``)."""
    from kernel import logs, telemetry

    logs.configure(process.name)
    telemetry.configure(process.name)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run(process, settings))
    finally:
        telemetry.shutdown()


def freeze_imports() -> None:
    """Collect once, then keep everything alive now out of every later garbage collection.

    A process's imports leave some 150,000 objects (modules, classes, functions) that live as
    long as it does. CPython's full collection walks all of them each time, 60 to 100 ms in which
    the event loop stands still, and under load that came every few seconds: a turn in flight
    then waited for it. Frozen (``gc.freeze``), they are never walked again; a full collection
    walks only what the process made since.
    """
    gc.collect()
    gc.freeze()


async def run(process: Process, settings: Settings) -> None:
    """Run one process until SIGINT/SIGTERM."""
    from schemas import extensions

    # Service authors' installed messages, before anything looks a message up.
    extensions.discover()
    entry = load(process)
    freeze_imports()
    result = entry(settings)
    if inspect.isawaitable(result):
        result = await until_stopped(result)
        if result is None:
            return
    from bus.runtime import serve
    from bus.service import Service

    if isinstance(result, Service):
        await until_stopped(serve(result, settings, settings.health_port))
        return
    raise ProcessUnavailable(
        f"{process.target} returned {type(result).__name__}; expected a bus.service.Service "
        "(handlers) or a coroutine that runs until stopped (saga runner, gateway)"
    )
