"""What every ``soma`` command shares at the terminal: output, errors that say what to do, and
a NATS connection for operator commands.

Errors are one readable message on stderr and a non-zero exit — never a traceback — because the
reader is an operator who needs the next step, not the stack.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from kernel.settings import Settings

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)

T = TypeVar("T")

# Exit codes: 1 something failed (NATS unreachable, not found), 2 the input was wrong.
FAILED = 1
USAGE = 2


def fail(message: str, code: int = FAILED) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    err.print(message, soft_wrap=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operator command's coroutine; a bus that cannot be reached is a clean error."""
    from bus.errors import BusUnavailable

    try:
        return asyncio.run(coro)
    except BusUnavailable as exc:
        fail(str(exc))


def settings() -> Settings:
    """The settings from the environment; a malformed variable is a usage error, not a trace."""
    from pydantic import ValidationError

    from kernel.settings import load

    try:
        return load()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        fail(f"invalid settings in the environment: {problems}", USAGE)


@asynccontextmanager
async def bus(
    settings: Settings, name: str = "soma-cli"
) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    """A connection for one operator command; yields ``(nc, js)`` and closes it afterwards."""
    from bus.connection import connect
    from bus.errors import BusUnavailable
    from soma.embedded import resolve_url

    url, source = resolve_url(settings)
    try:
        nc = await connect(url, name)
    except BusUnavailable as exc:
        raise BusUnavailable(f"{exc} (NATS URL from {source})") from exc
    try:
        yield nc, nc.jetstream()
    finally:
        with quiet_disconnect():
            await nc.close()


@contextmanager
def quiet_disconnect() -> Iterator[None]:
    """Closing on purpose is not a lost connection: hide the "reconnecting" warning it logs."""
    logger = logging.getLogger("soma.bus")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was
